"""COCO layout: tags and rasterised masks from instances_*.json, class maps, split names, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tagseg.data.dataset import DatasetError, list_splits, open_dataset
from tagseg.data.imageio import IGNORE_INDEX, read_mask
from tagseg.errors import DataError

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}]


def square(x0, y0, x1, y1) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def write_coco(root, split="train2017", images=None):
    """Images 40 x 30; 'a' holds a big dog with a small cat on it and a crowd of people, 'b' one person."""
    images = images or {"a": [(18, square(2, 2, 30, 26), 0), (17, square(10, 10, 16, 16), 0),
                              (1, {"size": [30, 40], "counts": [30 * 34, 30 * 6]}, 1)],
                        "b": [(1, square(0, 0, 10, 10), 0)]}
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    entries, annotations = [], []
    for index, (name, objects) in enumerate(images.items(), start=1):
        Image.fromarray(np.full((30, 40, 3), 60 * index, np.uint8)).save(root / split / f"{name}.jpg")
        entries.append({"id": index, "file_name": f"{name}.jpg", "height": 30, "width": 40})
        for category, segmentation, crowd in objects:
            area = 30 * 6 if crowd else (segmentation[0][2] - segmentation[0][0]) * (segmentation[0][5] - segmentation[0][1])
            annotations.append({"id": len(annotations) + 1, "image_id": index, "category_id": category,
                                "segmentation": segmentation, "iscrowd": crowd, "area": area, "bbox": [0, 0, 1, 1]})
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
        {"images": entries, "annotations": annotations, "categories": CATEGORIES}))
    return root


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TAGSEG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_tags_and_masks_come_from_the_annotations(tmp_path, cache):
    root = write_coco(tmp_path / "coco")
    write_coco(root, "val2017", {"c": [(17, square(0, 0, 20, 20), 0)]})
    assert list_splits(root) == ["train2017", "val2017"]
    dataset = open_dataset(root, "train")  # the one split whose name starts with train
    assert dataset.format == "coco" and dataset.split == "train2017"
    assert dataset.class_names == ("background", "person", "cat", "dog")
    tags = {r.id: r.labels for r in dataset.records}
    assert tags == {"a": (2, 3), "b": (1,)}  # the crowd of people is not a tag
    mask = read_mask(dataset.record("a").mask_path, dataset.num_classes)
    assert mask[5, 5] == 3 and mask[12, 12] == 2  # the small cat is drawn over the dog
    assert mask[0, 0] == 0 and (mask[:, 34:] == IGNORE_INDEX).all()  # crowd regions are void
    assert dataset.record("a").mask_path.is_relative_to(cache)  # the dataset folder is not written to
    again = open_dataset(root, "train2017")
    assert again.content_key == dataset.content_key


def test_a_class_map_folds_categories_and_voids_the_rest(tmp_path):
    root = write_coco(tmp_path / "coco")
    (root / "classes.txt").write_text("background\nanimal\n")
    (root / "class_map.csv").write_text("coco_category,class\ncat,animal\ndog,animal\n")
    dataset = open_dataset(root, "train2017", strict=False)
    assert dataset.class_names == ("background", "animal")
    assert {r.id: r.labels for r in dataset.records} == {"a": (1,), "b": ()}
    assert [p.kind for p in dataset.problems] == ["no tags"]
    mask = read_mask(dataset.record("b").mask_path, 2)
    assert mask[5, 5] == IGNORE_INDEX and mask[20, 20] == 0  # a person is no class here: void, not background


def test_bad_files_are_named(tmp_path):
    root = write_coco(tmp_path / "coco")
    (root / "train2017" / "b.jpg").unlink()
    with pytest.raises(DatasetError, match="b.jpg"):
        open_dataset(root, "train2017")
    (root / "annotations" / "instances_val2017.json").write_text("{not json")
    with pytest.raises(DataError, match="instances_val2017.json: not a COCO annotation file"):
        open_dataset(root, "val2017")
    with pytest.raises(DataError, match="no split 'test'"):
        open_dataset(root, "test")
    (root / "class_map.csv").write_text("cat,animal\n")
    with pytest.raises(DataError, match="class_map.csv: a class map needs classes.txt"):
        open_dataset(root, "train2017", strict=False)
    (root / "classes.txt").write_text("background\nanimal\n")
    (root / "class_map.csv").write_text("tiger,animal\n")
    with pytest.raises(DataError, match="line 1: 'tiger' is not a COCO category"):
        open_dataset(root, "train2017", strict=False)


def test_data_check_and_a_stage_run_on_coco(tmp_path):
    from typer.testing import CliRunner

    from tagseg.cli import app
    from tagseg.stages.prior import PriorConfig, run_prior

    root = write_coco(tmp_path / "coco")
    write_coco(root, "val2017", {"c": [(17, square(0, 0, 20, 20), 0)]})
    result = CliRunner().invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 0, result.output
    assert "coco layout" in result.output and "train2017 images" in result.output and "val2017 images" in result.output
    manifest = run_prior(open_dataset(root, "train"), tmp_path / "run", PriorConfig())
    assert 0 <= manifest["metrics"]["miou"] <= 1
