"""Make ``import torchvision`` work on a CPU-only torch.

Why this exists: torchvision 0.28.0 is published only as a CUDA build. Its compiled
extension (``_C.so``) may fail to load against the CPU build of torch 2.13.0, and
torchvision's Python code then dies at import with "operator torchvision::nms does not
exist" because it registers fake kernels for ``nms`` and ``qnms`` unconditionally. timm imports torchvision,
so every backbone depends on this. We never call ``torchvision.ops.nms`` or
``torchvision.io``; declaring those two schemas is enough for the import to succeed.
Call :func:`ensure_torchvision` before the first ``import torchvision`` / ``import timm``.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

_library = None  # keeps the schema registration alive for the whole process


def ensure_torchvision() -> None:
    """Load torchvision's kernels, or declare the schemas it needs when they cannot load."""
    global _library
    import torch

    if _library is not None or _has_nms(torch):
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return  # torchvision absent: the caller's own import will say so
    extension = Path(spec.origin).parent / "_C.so"
    try:
        torch.ops.load_library(str(extension))
    except (OSError, RuntimeError):
        pass
    if _has_nms(torch):
        return
    _library = torch.library.Library("torchvision", "DEF")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    # torchvision warns that its extension did not load; that is expected here.
    warnings.filterwarnings("ignore", message="Failed to load '_C' extension")


def _has_nms(torch) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
    except RuntimeError:
        return False
    return True
