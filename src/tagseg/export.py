"""`tagseg export`: a trained segmentation network as ONNX, and running such a file in `tagseg predict`.

The file takes a normalised RGB batch (N, 3, H, W) of any size and returns class logits at the
input size, like the PyTorch network. Its metadata carries what inference needs besides the
graph: class names, the normalisation mean and deviation, the training config. Every export is
checked with onnxruntime against the PyTorch output at two image sizes before the file is kept.
ONNX and onnxruntime are an optional extra (``pip install 'tagseg[onnx]'``).

The export uses PyTorch's TorchScript-based exporter (``dynamo=False``): it needs no onnxscript
and exports these networks' dynamic input size in seconds on a CPU. PyTorch calls it deprecated
in favour of its torch.export-based exporter; its warning is silenced here.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from tagseg import __version__
from tagseg.errors import ConfigError, DataError
from tagseg.rundir import atomic_write

OPSET = 17
TOLERANCE = 1e-3  # largest logit difference accepted between onnxruntime and PyTorch
CHECK_SIZES = ((1, 3, 240, 320), (2, 3, 200, 152))  # two shapes: the exported graph must not fix one


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"ONNX support needs the '{module}' package: pip install 'tagseg[onnx]'") from None


def export_onnx(model_path: Path, out_path: Path, opset: int = OPSET) -> dict:
    """Export ``RUN/train_seg/model.pt`` to ``out_path``; returns what the onnxruntime check measured."""
    from tagseg.stages.train_seg import load_seg_net

    onnx = _require("onnx")
    net, saved = load_seg_net(model_path)
    example = torch.zeros(CHECK_SIZES[0])
    dynamic = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = out_path.with_name(f".{out_path.name}.export")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(net, (example,), str(staging), input_names=["image"], output_names=["logits"],
                              dynamic_axes=dynamic, opset_version=opset, dynamo=False)
        model = onnx.load(str(staging))
        metadata = {"tagseg_version": __version__, "class_names": json.dumps(list(saved["class_names"])),
                    "mean": json.dumps(list(net.backbone.mean)), "std": json.dumps(list(net.backbone.std)),
                    "config": json.dumps(saved["config"])}
        onnx.helper.set_model_props(model, metadata)
        onnx.checker.check_model(model)
        difference = _largest_difference(net, model.SerializeToString())
        if difference > TOLERANCE:
            raise DataError(f"{model_path}: the ONNX export differs from the PyTorch network by {difference:.2e} "
                            f"(more than {TOLERANCE:g}); not written")
        atomic_write(out_path, lambda tmp: onnx.save(model, str(tmp)))
    finally:
        staging.unlink(missing_ok=True)
    return {"path": str(out_path), "opset": opset, "max_abs_difference": difference,
            "checked_shapes": [list(s) for s in CHECK_SIZES]}


def _largest_difference(net, serialized: bytes) -> float:
    ort = _require("onnxruntime")
    session = ort.InferenceSession(serialized, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    largest = 0.0
    for shape in CHECK_SIZES:
        batch = torch.randn(shape, generator=generator)
        with torch.no_grad():
            expected = net(batch).numpy()
        got = session.run(None, {"image": batch.numpy()})[0]
        largest = max(largest, float(np.abs(got - expected).max()))
    return largest


class OnnxSegmenter:
    """An exported network run by onnxruntime, with what :func:`tagseg.stages.segment.segment_image` reads of a
    :class:`~tagseg.models.segmentation.SegmentationNet`: ``num_classes``, ``backbone.mean`` / ``std`` and a
    call from a normalised batch to logits at the input size."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        ort = _require("onnxruntime")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
            metadata = self.session.get_modelmeta().custom_metadata_map
            self.class_names = tuple(json.loads(metadata["class_names"]))
            self.backbone = SimpleNamespace(mean=tuple(json.loads(metadata["mean"])),
                                            std=tuple(json.loads(metadata["std"])))
        except Exception as error:  # a foreign or damaged file: name it, no traceback
            raise DataError(f"{path}: not a TagSeg ONNX export ({error})") from None
        self.num_classes = len(self.class_names)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"image": batch.detach().cpu().float().numpy()})[0])


def load_segmenter(path: Path, device: str = "cpu"):
    """A trained network for inference from ``model.pt`` or an ONNX export; returns it and its class names."""
    if Path(path).suffix.lower() == ".onnx":
        if not Path(path).is_file():
            raise DataError(f"{path}: ONNX file not found")
        segmenter = OnnxSegmenter(path, device)
        return segmenter, segmenter.class_names
    from tagseg.stages.train_seg import load_seg_net

    net, saved = load_seg_net(path, device)
    return net, tuple(saved["class_names"])
