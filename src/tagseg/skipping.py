"""``on_error: skip``: leave unreadable images out of a run instead of stopping at the first one.

With the default ``stop`` the first image that cannot be decoded stops the stage, naming the
file. With ``skip`` the pipeline (or a stage command) decodes every image of a split once,
before any stage runs, names each bad file in the log and hands the stages a dataset without
them (their ids and reasons ride along in ``Dataset.skipped``), so per-image and training
stages alike never see them. Each stage lists them in its manifest; a stage that reads
another stage's per-image output also leaves out what that stage skipped, since it has no
output for them; the report and ``tagseg run`` list them for the whole run.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tagseg.data.dataset import Dataset, Record
from tagseg.data.imageio import read_image
from tagseg.errors import DataError
from tagseg.progress import parallel_map
from tagseg.rundir import MANIFEST, ArtifactDir, read_manifest

log = logging.getLogger(__name__)


def unreadable_images(dataset: Dataset, workers: int = 1) -> dict[str, str]:
    """id -> error message (naming the file) for every image of the dataset that cannot be decoded."""
    def check(record: Record) -> tuple[str, str] | None:
        try:
            read_image(record.image_path)
        except DataError as error:
            return record.id, str(error)
        return None

    found = parallel_map(check, dataset.records, len(dataset), f"decoding {len(dataset)} images", workers)
    return dict(result for result in found if result is not None)


def readable_only(dataset: Dataset, workers: int = 1) -> Dataset:
    """The dataset without its unreadable images; each one is named once in the log."""
    bad = unreadable_images(dataset, workers)
    for message in bad.values():
        log.warning("skipped: %s", message)
    if bad:
        log.warning("on_error skip: %d of %d images of split %s left out of every stage", len(bad), len(dataset),
                    dataset.split or "all")
    return dataset.leave_out(bad)


def skipped_by(manifest: dict | None) -> dict[str, str]:
    """The images (id -> reason) a stage's manifest says it left out."""
    return dict(((manifest or {}).get("skipped") or {}).get("images", {}))


def without_skipped_by(dataset: Dataset, source: dict, source_name: str) -> Dataset:
    """The dataset without the images an input stage skipped: it wrote nothing for them."""
    kept = dataset.leave_out(skipped_by(source))
    if len(kept) < len(dataset):
        log.info("%d image(s) that %s skipped are left out here too", len(dataset) - len(kept), source_name)
    return kept


def record_skipped(stage: ArtifactDir, *datasets: Dataset) -> None:
    """List in the stage's manifest the images its datasets left out (or clear an old list)."""
    skipped = {item: reason for dataset in datasets for item, reason in dataset.skipped.items()}
    if skipped:
        kept = sum(len(dataset) for dataset in datasets)
        stage.manifest["skipped"] = {
            "images": skipped,
            "note": f"{len(skipped)} image(s) left out of this stage (no output for them); its counts and "
                    f"metrics cover the other {kept}"}
    else:
        stage.manifest.pop("skipped", None)
    stage.record()


def skipped_in_run(run: Path) -> dict[str, dict]:
    """Every image some stage of the run left out: id -> {"reason", "stages"}, stages in name order."""
    found: dict[str, dict] = {}
    for manifest_path in sorted(Path(run).glob(f"*/{MANIFEST}")):
        for item, reason in skipped_by(read_manifest(manifest_path.parent)).items():
            found.setdefault(item, {"reason": reason, "stages": []})["stages"].append(manifest_path.parent.name)
    return found
