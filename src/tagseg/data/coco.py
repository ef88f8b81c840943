"""COCO layout: ``annotations/instances_<split>.json`` and the image folders as distributed (2014 or 2017).

    coco/
      annotations/instances_train2017.json, instances_val2017.json
      train2017/*.jpg, val2017/*.jpg          (or images/train2017/, ...)
      classes.txt      optional: the classes to use, background first (default: COCO's 80)
      class_map.csv    optional: coco_category,class rows mapping COCO's names onto classes.txt

A split is named by its annotation file (``train2017``); ``train`` and ``val`` also pick the one
annotation file whose name starts with them. Tags are the classes of an image's annotations;
masks are rasterised from the polygons and RLEs with pycocotools: crowd regions and objects of
categories outside the classes are void (255, never scored or learned), smaller objects are
drawn over larger ones. The masks are written once per split and class set to a cache
(``$TAGSEG_CACHE``, default ``~/.cache/tagseg``), so the dataset folder is never written to.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np

from tagseg.data.dataset import Dataset, Problem, Record, read_class_names
from tagseg.data.imageio import IGNORE_INDEX, write_mask
from tagseg.errors import DataError
from tagseg.progress import parallel_map

ANNOTATIONS = "annotations"
CLASS_MAP = "class_map.csv"
log = logging.getLogger(__name__)


def is_coco(root: Path) -> bool:
    return any((root / ANNOTATIONS).glob("instances_*.json")) if (root / ANNOTATIONS).is_dir() else False


def available_splits(root: Path) -> dict[str, Path]:
    """Split name -> its annotation file (``instances_<name>.json``)."""
    return {p.stem.removeprefix("instances_"): p for p in sorted((root / ANNOTATIONS).glob("instances_*.json"))}


def resolve_split(root: Path, split: str) -> str:
    """``split`` itself, or the one split whose name starts with it (``train`` -> ``train2017``)."""
    splits = available_splits(root)
    if split in splits:
        return split
    matches = [name for name in splits if name.startswith(split)]
    if len(matches) == 1:
        return matches[0]
    raise DataError(f"{root / ANNOTATIONS}: no split {split!r}" + (f" (several start with it: {', '.join(matches)})"
                    if matches else f" (annotation files give: {', '.join(splits) or 'none'})"))


def cache_root() -> Path:
    return Path(os.environ.get("TAGSEG_CACHE") or Path.home() / ".cache" / "tagseg")


def _load(path: Path):
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            return COCO(str(path))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path}: not a COCO annotation file ({type(error).__name__}: {error})") from None


def class_mapping(root: Path, coco) -> tuple[tuple[str, ...], dict[int, int]]:
    """The class names (background first) and COCO category id -> class index (unmapped categories absent)."""
    categories = {c["id"]: c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))}
    class_file, map_file = root / "classes.txt", root / CLASS_MAP
    if not class_file.exists():
        if map_file.exists():
            raise DataError(f"{map_file}: a class map needs classes.txt beside it (the classes it maps onto)")
        names = ("background", *categories.values())
        return names, {cid: index for index, cid in enumerate(categories, start=1)}
    names = read_class_names(class_file)
    index = {name: i for i, name in enumerate(names)}
    pairs = {name: name for name in categories.values()}
    if map_file.exists():
        pairs = {}
        with open(map_file, newline="", encoding="utf-8") as handle:
            for line, row in enumerate(csv.reader(handle), start=1):
                if not row or row[0].startswith("#") or (line == 1 and row[0].strip().lower() == "coco_category"):
                    continue
                if len(row) != 2:
                    raise DataError(f"{map_file}: line {line}: expected coco_category,class")
                source, target = (value.strip() for value in row)
                if source not in categories.values():
                    raise DataError(f"{map_file}: line {line}: {source!r} is not a COCO category of this file")
                if target not in index or index[target] == 0:
                    raise DataError(f"{map_file}: line {line}: {target!r} is not a foreground class of classes.txt")
                pairs[source] = target
    return names, {cid: index[pairs[name]] for cid, name in categories.items() if pairs.get(name) in index
                   and index[pairs[name]] > 0}


def rasterise(coco, image_id: int, height: int, width: int, mapping: dict[int, int]) -> np.ndarray:
    """One image's class mask: objects drawn largest first, crowd and unmapped categories void."""
    mask = np.zeros((height, width), np.uint8)
    annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None))
    for annotation in sorted(annotations, key=lambda a: -float(a.get("area", 0.0))):
        pixels = coco.annToMask(annotation).astype(bool)
        crowd = annotation.get("iscrowd", 0) or annotation["category_id"] not in mapping
        mask[pixels] = IGNORE_INDEX if crowd else mapping[annotation["category_id"]]
    return mask


def index_coco(root: Path, split: str | None, workers: int = 2) -> Dataset:
    if split is None:
        splits = available_splits(root)
        raise DataError(f"{root}: a COCO dataset is opened one split at a time (splits: {', '.join(splits)})")
    name = resolve_split(root, split)
    annotation_file = available_splits(root)[name]
    coco = _load(annotation_file)
    class_names, mapping = class_mapping(root, coco)
    folder = next((d for d in (root / name, root / "images" / name) if d.is_dir()), None)
    if folder is None:
        raise DataError(f"{root}: no image folder for split {name!r} (expected {root / name}/ or "
                        f"{root / 'images' / name}/)")
    stat = annotation_file.stat()
    key = hashlib.sha256(repr((annotation_file.name, stat.st_size, stat.st_mtime_ns, class_names,
                               sorted(mapping.items()))).encode()).hexdigest()[:16]
    masks = cache_root() / "coco" / key / name
    problems: list[Problem] = []
    records, todo = [], []
    for image in sorted(coco.loadImgs(coco.getImgIds()), key=lambda i: i["file_name"]):
        image_path = folder / image["file_name"]
        if not image_path.exists():
            problems.append(Problem("error", "missing image", annotation_file,
                                    f"image {image['file_name']!r} (id {image['id']}) not found in {folder}"))
            continue
        item_id = Path(image["file_name"]).stem
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]], iscrowd=False))
        labels = tuple(sorted({mapping[a["category_id"]] for a in annotations if a["category_id"] in mapping}))
        if not labels:
            problems.append(Problem("warning", "no tags", image_path, "no annotation of a class in use"))
        mask_path = masks / f"{item_id}.png"
        if not mask_path.exists():
            todo.append((image, mask_path))
        records.append(Record(item_id, image_path, mask_path, labels))
    if todo:
        log.info("coco: rasterising %d masks of %s into %s (once)", len(todo), name, masks)

        def draw(job) -> None:
            image, path = job
            write_mask(path, rasterise(coco, image["id"], image["height"], image["width"], mapping))

        for _ in parallel_map(draw, todo, len(todo), f"COCO masks ({name})", workers):
            pass
    return Dataset(root, "coco", class_names, records, name, {name: len(records)}, problems)
