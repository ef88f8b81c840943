"""Folder layout: ``images/`` + a tags CSV (+ optional ``masks/`` and ``classes.txt``).

The simplest way for users to bring their own data: drop images in a folder and list
their tags in ``tags.csv`` (``image,tags[,split]``). Without ``classes.txt`` the classes
are background plus every tag name in the CSV, sorted.
"""

from __future__ import annotations

from pathlib import Path

from tagseg.data.dataset import (
    Dataset, Problem, Record, find_images, names_to_labels, read_class_names, read_tags_csv,
)
from tagseg.errors import DataError

TAG_FILES = ("tags.csv", "labels.csv")


def index_folder(root: Path, split: str | None) -> Dataset:
    problems: list[Problem] = []
    tags_csv = next((root / name for name in TAG_FILES if (root / name).exists()), None)
    if tags_csv is None:
        raise DataError(f"{root}: folder dataset needs a tags CSV ({' or '.join(TAG_FILES)}) beside images/")
    rows = read_tags_csv(tags_csv, problems)
    class_file = root / "classes.txt"
    if class_file.exists():
        class_names = read_class_names(class_file)
    else:
        names = sorted({n for row in rows.values() for n in row.names} - {"background"})
        if not names:
            raise DataError(f"{tags_csv}: no tags at all, so no classes; add tags or a classes.txt")
        class_names = ("background", *names)

    images = find_images(root / "images", problems)
    for item_id, row in rows.items():
        if item_id not in images:
            problems.append(Problem("error", "missing image", tags_csv,
                                    f"line {row.line}: image {item_id!r} not found in images/"))
    split_counts: dict[str, int] = {}
    for row in rows.values():
        if row.split:
            split_counts[row.split] = split_counts.get(row.split, 0) + 1
    if split is not None and split not in split_counts:
        raise DataError(f"{tags_csv}: no split {split!r} "
                        f"(the CSV's split column has: {', '.join(sorted(split_counts)) or 'nothing'})")

    masks = root / "masks"
    records = []
    for item_id, image_path in images.items():
        row = rows.get(item_id)
        if split is not None and (row is None or row.split != split):
            continue
        mask_path = masks / f"{item_id}.png" if masks.is_dir() else None
        if mask_path is not None and not mask_path.exists():
            problems.append(Problem("warning", "missing mask", image_path, "no mask in masks/"))
            mask_path = None
        labels = names_to_labels(row.names, class_names, tags_csv, problems, f"line {row.line}: ") if row else ()
        if not labels:
            why = "image has no tags" if row else f"image has no row in {tags_csv.name}"
            problems.append(Problem("warning", "no tags", image_path, why))
        records.append(Record(item_id, image_path, mask_path, labels))
    return Dataset(root, "folder", class_names, records, split, dict(sorted(split_counts.items())), problems)
