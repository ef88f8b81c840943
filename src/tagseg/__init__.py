"""TagSeg: weakly supervised semantic segmentation from image-level tags."""

__version__ = "0.1.0"
