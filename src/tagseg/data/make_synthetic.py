"""Write the procedural synthetic dataset to disk in PASCAL VOC layout, resumably.

Each image depends only on (seed, index), so an interrupted run resumes where it stopped
and a parallel run gives the same bytes as a serial one. The index files (classes.txt,
labels.csv, splits) are written last, from the masks, so they always match the pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tagseg.data.imageio import IGNORE_INDEX, read_mask, write_image, write_mask
from tagseg.data.synthetic import DEFAULT_OBJECT_SIZE, SYNTHETIC_CLASSES, generate_sample
from tagseg.progress import parallel_map
from tagseg.rundir import ArtifactDir, atomic_write_text

MANIFEST = "synthetic.json"


def synthetic_id(index: int) -> str:
    return f"synth_{index:05d}"


def write_synthetic_dataset(out: Path, count: int, seed: int = 0, size: tuple[int, int] = (160, 120),
                            val_fraction: float = 0.25, max_objects: int = 3,
                            object_size: tuple[float, float] = DEFAULT_OBJECT_SIZE, *, workers: int = 1,
                            force: bool = False) -> dict:
    """Generate ``count`` images into ``out``; the last ``val_fraction`` of them form the val split."""
    if count < 2:
        raise ValueError("count must be at least 2 (one train and one val image)")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be between 0 and 1")
    if not 0 < object_size[0] <= object_size[1] <= 1:
        raise ValueError(f"object_size must satisfy 0 < min <= max <= 1, got {tuple(object_size)}")
    config = {"count": count, "seed": seed, "size": list(size), "val_fraction": val_fraction,
              "max_objects": max_objects}
    if tuple(object_size) != DEFAULT_OBJECT_SIZE:  # datasets written before the setting existed stay valid
        config["object_size"] = list(object_size)
    out = Path(out)
    with ArtifactDir(out, "synthetic dataset", config, force=force, manifest_name=MANIFEST) as directory:
        indices = range(count)
        todo = [i for i in indices if not (directory.item_path(synthetic_id(i), ".png", "SegmentationClass").exists()
                                            and directory.item_path(synthetic_id(i), ".jpg", "JPEGImages").exists())]

        def make(index: int) -> None:
            image, mask = generate_sample(index, seed=seed, size=size, max_objects=max_objects,
                                          object_size=tuple(object_size))
            write_image(directory.item_path(synthetic_id(index), ".jpg", "JPEGImages"), image)
            write_mask(directory.item_path(synthetic_id(index), ".png", "SegmentationClass"), mask)

        for _ in parallel_map(make, todo, len(todo), "generating images", workers):
            pass
        directory.record(items_computed=len(todo))

        tags = {}
        for index in indices:
            item_id = synthetic_id(index)
            mask = read_mask(directory.item_path(item_id, ".png", "SegmentationClass"), len(SYNTHETIC_CLASSES))
            present = [int(v) for v in np.unique(mask) if 0 < v != IGNORE_INDEX]
            tags[item_id] = " ".join(SYNTHETIC_CLASSES[c] for c in present)
        num_val = max(1, round(count * val_fraction))
        ids = [synthetic_id(i) for i in indices]
        splits = {"train": ids[:-num_val], "val": ids[-num_val:]}
        atomic_write_text(out / "classes.txt", "\n".join(SYNTHETIC_CLASSES) + "\n")
        atomic_write_text(out / "labels.csv", "image,tags\n" + "".join(f"{i},{t}\n" for i, t in tags.items()))
        for name, members in splits.items():
            atomic_write_text(out / "ImageSets" / "Segmentation" / f"{name}.txt", "\n".join(members) + "\n")
        summary = {"images": count, "generated_now": len(todo), "splits": {k: len(v) for k, v in splits.items()}}
        directory.record(summary=summary)
    return summary
