"""Typed stage configuration from a YAML file plus ``--set key=value`` overrides.

Validation happens here, at the edge; stages receive a validated pydantic model. Every
error names the file (or the override) and the key at fault.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tagseg.errors import ConfigError

Model = TypeVar("Model", bound=BaseModel)


def parse_overrides(overrides: list[str]) -> dict:
    """``["a=1", "b.c=[1, 2]"]`` -> ``{"a": 1, "b": {"c": [1, 2]}}``; values are read as YAML."""
    result: dict = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({error})") from None
        target = result
        *parents, leaf = key.strip().split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return result


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML ({error})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def validate(model: type[Model], values: dict, source: str) -> Model:
    """Build ``model`` from ``values``; errors list each bad key with the reason."""
    try:
        return model(**values)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"]) or "(config)"
            reason = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
            problems.append(f"{key}: {reason}" + ("" if item["type"] == "extra_forbidden"
                                                  else f" (got {item.get('input')!r})"))
        raise ConfigError(f"{source}: invalid config: " + "; ".join(problems)) from None


def load_config(model: type[Model], path: Path | None = None, overrides: list[str] | None = None) -> Model:
    values = read_yaml(path) if path else {}
    values = merge(values, parse_overrides(overrides or []))
    source = " + ".join(filter(None, [str(path) if path else "", "--set" if overrides else ""])) or "defaults"
    return validate(model, values, source)


class CrfConfig(BaseModel):
    """Dense CRF settings shared by the stages that use one. Kernel widths are in pixels of a 320 px image
    (tagseg.sizing) and scale with the dataset's image size: PSA's bilateral width of 50 px for ~500 px VOC
    photos is 32 px here; on msrc-voc, 32 scored 2.2 mIoU above 50 (benchmarks/crf_msrc.py)."""

    model_config = ConfigDict(extra="forbid")

    gaussian_sxy: float = Field(3.0, gt=0, description="smoothness kernel's width, px of a 320 px photo")
    gaussian_compat: float = Field(3.0, ge=0, description="smoothness kernel's weight")
    bilateral_sxy: float = Field(32.0, gt=0, description="appearance kernel's position width, px of a 320 px photo")
    bilateral_srgb: float = Field(5.0, gt=0, description="appearance kernel's colour width")
    bilateral_compat: float = Field(10.0, ge=0, description="appearance kernel's weight")
    iterations: int = Field(10, ge=1, description="mean-field iterations")

    def params(self, image_size: int):
        """The CRF parameters for images whose long side is ``image_size``."""
        from tagseg.refine.crf import CrfParams
        from tagseg.sizing import image_pixels

        values = self.model_dump()
        for key in ("gaussian_sxy", "bilateral_sxy"):
            values[key] = image_pixels(values[key], image_size)
        return CrfParams(**values)


def positive_scales(scales: tuple[float, ...]) -> tuple[float, ...]:
    """Validator for multi-scale inference settings: a non-empty list of positive factors."""
    if not scales or min(scales) <= 0:
        raise ValueError("scales must be a non-empty list of positive factors")
    return scales
