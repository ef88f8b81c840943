"""Tiny datasets built inside each test, so tests never depend on files outside the repo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tagseg.data.imageio import write_mask

SHARED_MSRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "msrc-voc"
CLASSES = ("background", "cat", "dog")


def two_region_mask(height: int = 24, width: int = 32, cls: int = 1) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[4:16, 6:20] = cls
    return mask


def random_image(height: int = 24, width: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def make_voc(tmp_path):
    """Build a valid VOC-layout dataset; returns its root. ``ids`` maps id -> class index."""

    def build(ids: dict[str, int] | None = None, root: Path | None = None, splits: dict[str, list[str]] | None = None,
              tags_csv: bool = True) -> Path:
        ids = ids or {"a": 1, "b": 2, "c": 1, "d": 2}
        root = root or tmp_path / "voc"
        (root / "JPEGImages").mkdir(parents=True)
        (root / "ImageSets" / "Segmentation").mkdir(parents=True)
        (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
        for k, (item_id, cls) in enumerate(ids.items()):
            Image.fromarray(random_image(seed=k)).save(root / "JPEGImages" / f"{item_id}.jpg")
            write_mask(root / "SegmentationClass" / f"{item_id}.png", two_region_mask(cls=cls))
        if tags_csv:
            (root / "labels.csv").write_text(
                "image,tags\n" + "".join(f"{i},{CLASSES[c]}\n" for i, c in ids.items()), encoding="utf-8")
        splits = splits or {"train": list(ids)[: len(ids) // 2], "val": list(ids)[len(ids) // 2:]}
        for name, members in splits.items():
            (root / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("\n".join(members) + "\n",
                                                                              encoding="utf-8")
        return root

    return build


@pytest.fixture
def make_folder(tmp_path):
    """Build a valid folder-layout dataset (images/ + tags.csv + masks/); returns its root."""

    def build(rows: dict[str, str] | None = None, root: Path | None = None, with_masks: bool = True) -> Path:
        rows = rows or {"x1": "cat", "x2": "dog", "x3": "cat dog"}
        root = root or tmp_path / "folder"
        (root / "images").mkdir(parents=True)
        lines = ["image,tags"]
        for k, (item_id, tags) in enumerate(rows.items()):
            Image.fromarray(random_image(seed=k)).save(root / "images" / f"{item_id}.png")
            lines.append(f"{item_id}.png,{tags}")
            if with_masks:
                mask = np.zeros((24, 32), np.uint8)
                for name in tags.split():
                    cls = CLASSES.index(name)
                    mask[:, (cls - 1) * 16:cls * 16] = cls
                write_mask(root / "masks" / f"{item_id}.png", mask)
        (root / "tags.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return root

    return build


@pytest.fixture
def interrupted(monkeypatch):
    """``interrupted(train_stage, *args, **kwargs)`` runs a training stage and kills it (KeyboardInterrupt)
    right after its first pass's checkpoint, as Ctrl-C would; the stage is left to resume."""
    from tagseg.rundir import ArtifactDir

    original = ArtifactDir.record

    def killed_after_first_pass(self, items_computed=0, **fields):
        original(self, items_computed, **fields)
        if len(fields.get("history", [])) == 1:
            raise KeyboardInterrupt

    def run(train_stage, *args, **kwargs):
        monkeypatch.setattr(ArtifactDir, "record", killed_after_first_pass)
        try:
            with pytest.raises(KeyboardInterrupt):
                train_stage(*args, **kwargs)
        finally:
            monkeypatch.setattr(ArtifactDir, "record", original)

    return run
