"""Networks: backbone feature extractors and the heads built on them."""
