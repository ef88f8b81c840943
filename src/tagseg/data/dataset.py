"""The dataset model shared by every reader: records, samples and the problems found.

Readers (:mod:`tagseg.data.voc`, :mod:`tagseg.data.folder`) only build an index of
:class:`Record`; pixels are read lazily by :meth:`Dataset.load`, through
:mod:`tagseg.data.imageio`, so every format reports bad files the same way.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import numpy as np

from tagseg.data.imageio import image_size, read_image, read_mask
from tagseg.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


@dataclass(frozen=True)
class Problem:
    """One finding about the input: ``error`` stops a run, ``warning`` is safe to go on."""

    level: str
    kind: str
    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class DatasetError(DataError):
    """The dataset has errors; the message lists them (each naming its file)."""

    def __init__(self, root: Path, problems: list[Problem], limit: int = 10) -> None:
        self.problems = problems
        lines = [f"  {p}" for p in problems[:limit]]
        if len(problems) > limit:
            lines.append(f"  ... and {len(problems) - limit} more (run `tagseg data check {root}` for all)")
        super().__init__(f"dataset {root} has {len(problems)} error(s):\n" + "\n".join(lines))


@dataclass(frozen=True)
class Record:
    """Where one image's pixels live and which foreground classes it is tagged with."""

    id: str
    image_path: Path
    mask_path: Path | None
    labels: tuple[int, ...]


@dataclass
class Sample:
    """One loaded image: RGB pixels, tags as class indices and multi-hot, the mask if any."""

    id: str
    image: np.ndarray
    labels: tuple[int, ...]
    multi_hot: np.ndarray
    mask: np.ndarray | None


@dataclass
class Dataset:
    root: Path
    format: str
    class_names: tuple[str, ...]
    records: list[Record]
    split: str | None
    splits: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # id -> why it was left out (on_error: skip)

    @property
    def num_classes(self) -> int:
        """Number of classes including background (index 0)."""
        return len(self.class_names)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        return self.load(self.records[index])

    @property
    def content_key(self) -> str:
        """A key of what the stages read from the dataset: class names, split, and each image's id, tags and
        file names relative to the root. Stages record it instead of the root's absolute path, so a dataset
        (or a run) moved elsewhere keeps its finished stages, while changed tags invalidate them."""
        if not hasattr(self, "_content_key"):
            digest = hashlib.sha256(repr((self.format, self.class_names, self.split)).encode())
            for r in self.records:
                mask = None
                if r.mask_path is not None:  # COCO's rasterised masks live in a cache outside the root
                    mask = (r.mask_path.relative_to(self.root).as_posix() if r.mask_path.is_relative_to(self.root)
                            else r.mask_path.name)
                digest.update(repr((r.id, r.labels, r.image_path.relative_to(self.root).as_posix(), mask)).encode())
            self._content_key = digest.hexdigest()[:16]
        return self._content_key

    def identity(self) -> dict:
        """What a stage config records about its input dataset (see :attr:`content_key`)."""
        return {"dataset": self.content_key, "split": self.split}

    def record(self, item_id: str) -> Record:
        if not hasattr(self, "_by_id"):
            self._by_id = {r.id: r for r in self.records}
        try:
            return self._by_id[item_id]
        except KeyError:
            raise DataError(f"{self.root}: no image with id {item_id!r} in split {self.split!r}") from None

    def leave_out(self, reasons: dict[str, str]) -> "Dataset":
        """A copy without the images named in ``reasons`` (id -> why); ids not in it are ignored.

        The copy keeps the content key of the split as indexed: what a stage skipped is listed in
        its manifest, not part of its identity, so a stage stopped by a bad image resumes with
        ``on_error: skip`` instead of being refused as made with another config.
        """
        gone = {r.id: reasons[r.id] for r in self.records if r.id in reasons}
        if not gone:
            return self
        kept = dataclasses.replace(self, records=[r for r in self.records if r.id not in gone],
                                   skipped={**self.skipped, **gone})
        kept._content_key = self.content_key
        return kept

    def multi_hot(self, labels: tuple[int, ...]) -> np.ndarray:
        """Tags as a float vector over the foreground classes (entry c-1 is class c)."""
        vector = np.zeros(self.num_classes - 1, dtype=np.float32)
        vector[[c - 1 for c in labels]] = 1.0
        return vector

    def load(self, record: Record) -> Sample:
        image, _ = read_image(record.image_path)
        mask = None
        if record.mask_path is not None:
            mask = read_mask(record.mask_path, self.num_classes)
            if mask.shape != image.shape[:2]:
                raise DataError(f"{record.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but image "
                                f"{record.image_path.name} is {image.shape[1]}x{image.shape[0]}")
        return Sample(record.id, image, record.labels, self.multi_hot(record.labels), mask)

    def load_mask(self, record: Record) -> np.ndarray:
        """Only the ground-truth mask (evaluation needs no pixels of the image)."""
        if record.mask_path is None:
            raise DataError(f"{record.image_path}: no ground-truth mask for image {record.id!r}")
        return read_mask(record.mask_path, self.num_classes)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    def warning_counts(self) -> Counter:
        return Counter(p.kind for p in self.problems if p.level == "warning")

    def class_image_counts(self) -> dict[str, int]:
        """How many images are tagged with each foreground class."""
        counts = Counter(c for r in self.records for c in r.labels)
        return {name: counts.get(index, 0) for index, name in enumerate(self.class_names) if index > 0}


def read_class_names(path: Path) -> tuple[str, ...]:
    """Class names one per line, background first; blank lines and '#' comments skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from None
    names = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if len(names) < 2:
        raise DataError(f"{path}: needs background plus at least one class, found {len(names)} name(s)")
    duplicates = [n for n, k in Counter(names).items() if k > 1]
    if duplicates:
        raise DataError(f"{path}: duplicate class names {duplicates}")
    return tuple(names)


@dataclass(frozen=True)
class TagRow:
    line: int
    names: tuple[str, ...]
    split: str | None


def read_tags_csv(path: Path, problems: list[Problem]) -> dict[str, TagRow]:
    """Parse ``image,tags[,split]`` rows. Tags are separated by spaces, or by ; , | when present.

    The image column may carry a file extension; ids are file stems. Duplicate ids are
    reported as errors (the first row wins so later checks still run).
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from None
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["image", "tags"]:
        raise DataError(f"{path}: first row must be the header 'image,tags' (optionally ',split')")
    header = [c.strip().lower() for c in rows[0]]
    split_column = header.index("split") if "split" in header else None
    tags: dict[str, TagRow] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or not row[0].strip():
            continue
        item_id = Path(row[0].strip()).stem if Path(row[0].strip()).suffix.lower() in IMAGE_SUFFIXES \
            else row[0].strip()
        field_text = row[1] if len(row) > 1 else ""
        separator = r"[;,|]" if re.search(r"[;,|]", field_text) else r"\s+"
        names = tuple(n.strip() for n in re.split(separator, field_text) if n.strip())
        split = row[split_column].strip() if split_column is not None and len(row) > split_column else None
        if item_id in tags:
            problems.append(Problem("error", "duplicate id", path,
                                    f"line {line}: duplicate image id {item_id!r} (first on line {tags[item_id].line})"))
            continue
        tags[item_id] = TagRow(line, names, split or None)
    return tags


def names_to_labels(names: tuple[str, ...], class_names: tuple[str, ...], where: Path,
                    problems: list[Problem], context: str = "") -> tuple[int, ...]:
    """Class indices for tag names; unknown names become errors naming ``where``."""
    index = {name: i for i, name in enumerate(class_names)}
    labels = set()
    for name in names:
        if name not in index:
            problems.append(Problem("error", "unknown tag", where,
                                    f"{context}unknown tag {name!r} (classes: {', '.join(class_names[1:])})"))
        elif index[name] > 0:
            labels.add(index[name])
    return tuple(sorted(labels))


def find_images(directory: Path, problems: list[Problem]) -> dict[str, Path]:
    """Image files by id (file stem); two files with one stem are a duplicate-id error."""
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
            continue
        if path.stem in found:
            problems.append(Problem("error", "duplicate id", path,
                                    f"duplicate image id {path.stem!r} (also {found[path.stem].name})"))
            continue
        found[path.stem] = path
    return found


def list_splits(root: Path | str) -> list[str]:
    """Names of the splits a dataset defines (VOC split files, COCO annotation files, or the folder CSV's
    split column)."""
    from tagseg.data import coco
    from tagseg.data.folder import TAG_FILES
    from tagseg.data.voc import available_splits

    root = Path(root)
    if (root / "JPEGImages").is_dir():
        return list(available_splits(root))
    if coco.is_coco(root):
        return list(coco.available_splits(root))
    tags_csv = next((root / name for name in TAG_FILES if (root / name).exists()), None)
    if tags_csv is None:
        return []
    return sorted({row.split for row in read_tags_csv(tags_csv, []).values() if row.split})


def open_dataset(root: Path | str, split: str | None = None, *, strict: bool = True) -> Dataset:
    """Open a dataset, detecting its layout: PASCAL VOC (``JPEGImages/``), COCO (``annotations/instances_*.json``)
    or a folder (``images/`` + a tags CSV).

    ``split`` picks a subset (VOC ``ImageSets/Segmentation/<split>.txt``, a COCO annotation file, or the
    folder CSV's ``split`` column); None means every image (not for COCO, opened one split at a time). With ``strict`` any error raises
    :class:`DatasetError`; warnings stay in ``dataset.problems``.
    """
    from tagseg.data import coco
    from tagseg.data.folder import index_folder
    from tagseg.data.voc import index_voc

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset directory not found")
    if (root / "JPEGImages").is_dir():
        dataset = index_voc(root, split)
    elif coco.is_coco(root):
        dataset = coco.index_coco(root, split)
    elif (root / "images").is_dir():
        dataset = index_folder(root, split)
    else:
        raise DataError(f"{root}: not a dataset: expected JPEGImages/ (PASCAL VOC layout), annotations/"
                        "instances_*.json (COCO layout) or images/ + a tags CSV (folder layout)")
    if strict and dataset.errors:
        raise DatasetError(root, dataset.errors)
    return dataset


def evenly_spaced(items: list, count: int) -> list:
    """``count`` of ``items`` spread evenly from the first to the last (all of them when there are
    fewer): a sample that covers a dataset sorted by name without favouring its start."""
    if count >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def batches_by_size(records: list[Record], batch_size: int) -> list[list[Record]]:
    """Records grouped into batches of at most ``batch_size`` images that all share one size
    (read from the file headers), so each batch stacks into one tensor."""
    sizes = {r.id: image_size(r.image_path) for r in records}
    ordered = sorted(records, key=lambda r: sizes[r.id])
    batches: list[list[Record]] = []
    for _, same_size in groupby(ordered, key=lambda r: sizes[r.id]):
        group = list(same_size)
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    return batches
