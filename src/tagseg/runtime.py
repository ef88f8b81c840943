"""Process-level set-up shared by commands: logging to the console and to the run directory."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.logging import RichHandler

from tagseg.progress import console

LOG_FILE = "tagseg.log"


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger("tagseg")
    root.setLevel(level.upper())
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        root.addHandler(RichHandler(console=console, show_path=False, show_time=False))


def log_to_run(run_dir: Path) -> None:
    """Also append this process's log lines to ``<run>/tagseg.log``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = (run_dir / LOG_FILE).resolve()
    root = logging.getLogger("tagseg")
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in root.handlers):
        return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
