"""Pipeline stages: each reads its inputs (a dataset, earlier stages) and writes ``<run>/<stage>/``."""
