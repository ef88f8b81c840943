"""PASCAL VOC layout: JPEGImages/, SegmentationClass[Aug]/, ImageSets/Segmentation/, tags.

Works for VOC 2012 (+ SBD's SegmentationClassAug and train_aug split) and for datasets
converted to that layout (msrc-voc, the synthetic demo data).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from tagseg.data.dataset import (
    VOC_CLASSES, Dataset, Problem, Record, find_images, names_to_labels, read_class_names, read_tags_csv,
)
from tagseg.data.imageio import IGNORE_INDEX, read_mask
from tagseg.errors import DataError

MASK_DIRS = ("SegmentationClass", "SegmentationClassAug")


def available_splits(root: Path) -> dict[str, Path]:
    directory = root / "ImageSets" / "Segmentation"
    return {p.stem: p for p in sorted(directory.glob("*.txt"))} if directory.is_dir() else {}


def _split_ids(path: Path, problems: list[Problem]) -> list[str]:
    ids, seen = [], {}
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        item_id = line.split()[0] if line.split() else ""
        if not item_id:
            continue
        if item_id in seen:
            problems.append(Problem("error", "duplicate id", path,
                                    f"line {line_number}: duplicate id {item_id!r} (first on line {seen[item_id]})"))
            continue
        seen[item_id] = line_number
        ids.append(item_id)
    return ids


def _annotation_names(path: Path) -> tuple[str, ...]:
    """Object class names of one VOC annotation (parts such as 'head' are not objects)."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise DataError(f"{path}: malformed annotation XML ({error})") from None
    return tuple(obj.findtext("name", "").strip() for obj in root.findall("object") if obj.findtext("name"))


def _mask_labels(path: Path, num_classes: int) -> tuple[int, ...]:
    values = np.unique(read_mask(path, num_classes))
    return tuple(int(v) for v in values if 0 < v < num_classes and v != IGNORE_INDEX)


def index_voc(root: Path, split: str | None) -> Dataset:
    problems: list[Problem] = []
    class_file = root / "classes.txt"
    class_names = read_class_names(class_file) if class_file.exists() else VOC_CLASSES
    images = find_images(root / "JPEGImages", problems)
    splits = available_splits(root)
    split_counts = {name: len(_split_ids(path, [])) for name, path in splits.items()}
    if split is None:
        ids = list(images)
    elif split not in splits:
        raise DataError(f"{root / 'ImageSets' / 'Segmentation'}: no split {split!r} "
                        f"(available: {', '.join(splits) or 'none'})")
    else:
        ids = _split_ids(splits[split], problems)
        for item_id in ids:
            if item_id not in images:
                problems.append(Problem("error", "missing image", splits[split],
                                        f"id {item_id!r} has no image in JPEGImages/"))
        ids = [i for i in ids if i in images]

    mask_dirs = [root / d for d in MASK_DIRS if (root / d).is_dir()]
    labels_csv = root / "labels.csv"
    annotations = root / "Annotations"
    tag_rows = read_tags_csv(labels_csv, problems) if labels_csv.exists() else None

    records = []
    for item_id in ids:
        mask_path = next((d / f"{item_id}.png" for d in mask_dirs if (d / f"{item_id}.png").exists()), None)
        if mask_dirs and mask_path is None:
            problems.append(Problem("warning", "missing mask", images[item_id],
                                    f"no mask in {' or '.join(d.name for d in mask_dirs)}/"))
        if tag_rows is not None:
            row = tag_rows.get(item_id)
            names = row.names if row else ()
            labels = names_to_labels(names, class_names, labels_csv, problems, f"line {row.line}: ") if row else ()
        elif annotations.is_dir() and (annotations / f"{item_id}.xml").exists():
            xml_path = annotations / f"{item_id}.xml"
            try:
                labels = names_to_labels(_annotation_names(xml_path), class_names, xml_path, problems)
            except DataError as error:
                problems.append(Problem("error", "bad annotation", xml_path, str(error).split(": ", 1)[1]))
                labels = ()
        elif mask_path is not None:
            try:
                labels = _mask_labels(mask_path, len(class_names))
            except DataError as error:
                problems.append(Problem("error", "bad mask", mask_path, str(error).split(": ", 1)[1]))
                labels = ()
        else:
            labels = ()
        if not labels:
            problems.append(Problem("warning", "no tags", images[item_id], "image has no tags"))
        records.append(Record(item_id, images[item_id], mask_path, labels))
    return Dataset(root, "voc", class_names, records, split, split_counts, problems)
