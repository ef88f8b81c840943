"""Process-level set-up shared by commands: logging to the console and to the run directory."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.logging import RichHandler

from tagseg.errors import ConfigError
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


def resolve_device(name: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; asking for a missing GPU is an error. Under torchrun
    'cuda' is this process's own GPU (``cuda:<LOCAL_RANK>``)."""
    import torch

    from tagseg.distributed import local_device

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible to torch (use --device cpu or auto)")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    return local_device(name)
