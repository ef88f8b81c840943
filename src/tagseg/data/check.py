"""Deep dataset check: decode every image and mask and report what is wrong, by file."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from tagseg.data.dataset import Dataset, Problem, Record
from tagseg.data.imageio import IGNORE_INDEX, read_image, read_mask
from tagseg.errors import DataError
from tagseg.progress import parallel_map


@dataclass
class CheckReport:
    """What ``tagseg data check`` prints: counts per split and class, and every problem."""

    root: str
    format: str
    class_names: tuple[str, ...]
    split_sizes: dict[str, int]
    class_counts: dict[str, dict[str, int]]
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    def counts_by_kind(self) -> Counter:
        return Counter((p.level, p.kind) for p in self.problems)

    def to_json(self) -> dict:
        return {
            "root": self.root, "format": self.format, "classes": list(self.class_names),
            "num_classes": len(self.class_names), "splits": self.split_sizes, "class_image_counts": self.class_counts,
            "errors": [{"kind": p.kind, "path": str(p.path), "message": p.message} for p in self.errors],
            "warnings": [{"kind": p.kind, "path": str(p.path), "message": p.message} for p in self.warnings],
        }


def _check_record(dataset: Dataset, record: Record) -> list[Problem]:
    problems = []
    try:
        image, converted_from = read_image(record.image_path)
    except DataError as error:
        return [Problem("error", "unreadable image", record.image_path, str(error).split(": ", 1)[1])]
    if converted_from is not None:
        problems.append(Problem("warning", "converted image", record.image_path,
                                f"{converted_from} image, read as RGB"))
    if record.mask_path is None:
        return problems
    try:
        mask = read_mask(record.mask_path, dataset.num_classes)
    except DataError as error:
        return problems + [Problem("error", "bad mask", record.mask_path, str(error).split(": ", 1)[1])]
    if mask.shape != image.shape[:2]:
        problems.append(Problem("error", "size mismatch", record.mask_path,
                                f"mask is {mask.shape[1]}x{mask.shape[0]} but image {record.image_path.name} "
                                f"is {image.shape[1]}x{image.shape[0]}"))
        return problems
    present = {int(v) for v in np.unique(mask)} - {0, IGNORE_INDEX}
    if record.labels and present != set(record.labels):
        names = dataset.class_names
        problems.append(Problem("warning", "tags differ from mask", record.mask_path,
                                f"tags {sorted(names[c] for c in record.labels)} but mask has "
                                f"{sorted(names[c] for c in present)}"))
    return problems


def check_dataset(datasets: list[Dataset], workers: int = 1) -> CheckReport:
    """Check one dataset opened once per split (or once with split None); pixels read once per image."""
    first = datasets[0]
    problems: list[Problem] = []
    seen_problems: set[tuple] = set()
    for dataset in datasets:
        for problem in dataset.problems:
            key = (problem.kind, str(problem.path), problem.message)
            if key not in seen_problems:
                seen_problems.add(key)
                problems.append(problem)
    records = list({r.id: r for d in datasets for r in d.records}.values())
    for found in parallel_map(lambda r: _check_record(first, r), records, len(records), "checking images", workers):
        problems.extend(found)
    split_sizes = {d.split or "all": len(d) for d in datasets}
    class_counts = {d.split or "all": d.class_image_counts() for d in datasets}
    return CheckReport(str(first.root), first.format, first.class_names, split_sizes, class_counts, problems)
