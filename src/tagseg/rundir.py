"""Run directories: where stages leave their artifacts, resumably and never half-written.

A stage owns ``<run>/<stage>/``. Its ``manifest.json`` records the stage config, the
package version, timings and metrics. Every file is written to a hidden temporary name
and renamed into place, so a killed process leaves either the whole file or nothing
(stale temporaries are swept on the next open). A rerun with the same config resumes;
a rerun with another config is refused unless ``force`` wipes the stage first.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tagseg import __version__
from tagseg.errors import StageError

MANIFEST = "manifest.json"
_TMP_MARK = ".tmp-"


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it onto ``path``.

    The temporary keeps the suffix so writers that infer a format from it still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}{_TMP_MARK}{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable list of keys whose values differ between two nested configs."""
    differences = []
    for key in sorted(set(old) | set(new), key=str):
        name = f"{prefix}{key}"
        if key not in old:
            differences.append(f"{name}: (absent) -> {new[key]!r}")
        elif key not in new:
            differences.append(f"{name}: {old[key]!r} -> (absent)")
        elif isinstance(old[key], dict) and isinstance(new[key], dict):
            differences.extend(config_differences(old[key], new[key], f"{name}."))
        elif old[key] != new[key]:
            differences.append(f"{name}: {old[key]!r} -> {new[key]!r}")
    return differences


class ArtifactDir:
    """A directory of per-item artifacts owned by one producer with one config.

    Use as a context manager: entering takes an exclusive lock (two processes never mix
    their outputs), checks the config, and sweeps stale temporaries.

    ``collective``: every process of a torchrun group enters together (a training stage). Rank 0
    owns the directory as above; the others wait for it, check the same config and write nothing
    (their :meth:`record` only updates their copy of the manifest).
    """

    def __init__(self, path: Path, kind: str, config: dict, *, force: bool = False,
                 manifest_name: str = MANIFEST, collective: bool = False) -> None:
        self.path = Path(path)
        self.kind = kind
        self.config = json.loads(json.dumps(config, default=str))  # plain JSON types, compared as stored
        self.force = force
        self.manifest_path = self.path / manifest_name
        self._lock_file = None
        self._started = 0.0
        self.manifest: dict[str, Any] = {}
        self.was_complete = False  # the directory held a finished stage of this config when entered
        self._group = None
        if collective:
            from tagseg import distributed  # imports torch: only where processes train together

            self._group = distributed if distributed.active() else None
        self._shadow = self._group is not None and not self._group.is_main()

    def __enter__(self) -> "ArtifactDir":
        if self._shadow:
            self._group.barrier()  # rank 0 has locked, checked (and with force wiped) the directory
            previous = self._read_manifest()
            self._check(previous)
            self.manifest = previous or {"kind": self.kind, "config": self.config, "created": _now(),
                                         "timings": {"seconds": 0.0, "items_computed": 0}}
            self._started = time.perf_counter()
            return self
        try:
            return self._enter_owner()
        finally:
            if self._group is not None:
                self._group.barrier()

    def _check(self, previous: dict | None) -> None:
        if previous is not None and previous.get("config") != self.config and not self.force:
            changes = config_differences(previous.get("config", {}), self.config)
            raise StageError(
                f"{self.path} was made with a different {self.kind} config "
                f"({'; '.join(changes)}). Rerun with --force to recompute it, "
                "or write to another directory.")

    def _enter_owner(self) -> "ArtifactDir":
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.path / ".lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise StageError(f"{self.path}: another tagseg process is writing here; wait for it to finish") from None
        previous = self._read_manifest()
        if previous is not None and previous.get("config") != self.config:
            self._check(previous)
            self._wipe()
            previous = None
        self.was_complete = previous is not None and previous.get("status") == "complete"
        self._sweep_temporaries()
        self.manifest = previous or {"kind": self.kind, "config": self.config, "created": _now(),
                                     "timings": {"seconds": 0.0, "items_computed": 0}}
        self.manifest.update(status="running", tagseg_version=__version__, updated=_now())
        write_json(self.manifest_path, self.manifest)
        self._started = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        together = self._group is not None and exc_type is None
        if self._shadow:
            if together:
                self._group.barrier()  # this process is done: rank 0 may write the final manifest
                self._group.barrier()  # it has: a next stage may read it
            return
        if together:
            self._group.barrier()
        try:
            timings = self.manifest["timings"]
            timings["seconds"] = round(timings["seconds"] + time.perf_counter() - self._started, 3)
            self.manifest["status"] = "complete" if exc_type is None else "interrupted"
            self.manifest["updated"] = _now()
            write_json(self.manifest_path, self.manifest)
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
        if together:
            self._group.barrier()

    def _read_manifest(self) -> dict | None:
        if not self.manifest_path.exists():
            return None
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise StageError(f"{self.manifest_path}: unreadable manifest ({error}); "
                             "rerun with --force to recompute this stage") from None

    def _wipe(self) -> None:
        for child in self.path.iterdir():
            if child.name == ".lock":
                continue
            shutil.rmtree(child) if child.is_dir() else child.unlink()

    def _sweep_temporaries(self) -> None:
        for leftover in self.path.rglob(f".*{_TMP_MARK}*"):
            leftover.unlink(missing_ok=True)

    def item_path(self, item_id: str, suffix: str, subdir: str = "") -> Path:
        return self.path / subdir / f"{item_id}{suffix}"

    def pending(self, item_ids: Iterable[str], suffix: str, subdir: str = "") -> list[str]:
        """The ids whose artifact does not exist yet (the work a resumed run still has to do); the same list
        in every process of a ``collective`` directory (each takes its :meth:`share`)."""
        todo = [i for i in item_ids if not self.item_path(i, suffix, subdir).exists()]
        if self._group is not None:
            self._group.barrier()  # every process listed the same files before any writes one
        return todo

    def share(self, work: list) -> list:
        """This process's part of ``work`` (every ``world``-th unit from its rank) in a ``collective``
        directory under torchrun; all of it otherwise. Units are done as one process would do them, so
        the files are the same whatever the number of processes."""
        return work if self._group is None else work[self._group.rank()::self._group.world_size()]

    def gather(self, computed: int) -> int | None:
        """After a collective per-image loop: wait until every process has written its share; returns how
        many items all of them computed on rank 0 (which records and scores the stage), None on the others."""
        if self._group is None:
            return computed
        total = int(self._group.sum_over_ranks({"computed": computed})["computed"])
        return total if self._group.is_main() else None

    def total(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over the processes of a ``collective`` directory (every process calls it); the
        values themselves otherwise. For counters a stage keeps beside its files (seconds, counts)."""
        return values if self._group is None else self._group.sum_over_ranks(values)

    def agree(self, key: str, compute: Callable[[], Any]) -> Any:
        """The manifest's ``key``: computed once by ``compute()`` and recorded when the manifest lacks it (a
        resumed stage keeps its earlier choice). In a ``collective`` directory rank 0 computes it and every
        other process reads what rank 0 recorded, so all of them go on with the same value."""
        if not self._shadow and key not in self.manifest:
            self.record(**{key: compute()})
        if self._group is not None:
            self._group.barrier()
            if self._shadow:
                self.manifest[key] = self._read_manifest()[key]
        return self.manifest[key]

    def record(self, items_computed: int = 0, **fields: Any) -> None:
        """Add fields (metrics, counts, inputs) to the manifest and save it now."""
        self.manifest["timings"]["items_computed"] += items_computed
        self.manifest.update(fields)
        self.manifest["updated"] = _now()
        if not self._shadow:
            write_json(self.manifest_path, self.manifest)


def stage_dir(run: Path, stage: str, config: dict, *, force: bool = False, collective: bool = False) -> ArtifactDir:
    """The artifact directory of one pipeline stage: ``<run>/<stage>/`` (``collective``: see :class:`ArtifactDir`)."""
    return ArtifactDir(Path(run) / stage, f"'{stage}' stage", config, force=force, collective=collective)


def file_digest(path: Path) -> str:
    """A short SHA-256 of a file's bytes: stages name the model they used by it, so a copied or moved run
    still matches (a modification time would not survive a copy)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()[:16]


def read_manifest(directory: Path) -> dict | None:
    """The manifest of a stage directory, or None when it has none."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def finished_stage(run: Path, stage: str, needed_by: str) -> dict:
    """The manifest of a finished input stage, or a StageError saying which stage to run first."""
    manifest = read_manifest(Path(run) / stage)
    if manifest is None or manifest.get("status") != "complete":
        raise StageError(f"{Path(run) / stage}: no finished '{stage}' stage for {needed_by} to read "
                         f"(run `tagseg {stage.replace('_', '-')}` first)")
    return manifest
