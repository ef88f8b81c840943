"""Progress bars with ETA and an ordered, bounded parallel map for per-image loops."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)

from tagseg.threads import worker_count

T = TypeVar("T")
R = TypeVar("R")

console = Console(stderr=True)


def progress_bar(total: int | None = None, description: str = "") -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console)


def track(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """Iterate with a progress bar showing done/total, elapsed time and ETA."""
    with progress_bar() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


def parallel_map(function: Callable[[T], R], items: Iterable[T], total: int, description: str,
                 workers: int = 1, processes: bool = False) -> Iterator[R]:
    """Apply ``function`` to each item in ``workers`` threads, yielding results in input order.

    At most ``2 * workers`` items are in flight, so memory stays bounded on big datasets.
    An exception in one item stops the loop and cancels the items not yet started.
    Threads suffice for image decoding, compression and numpy, which release the GIL;
    ``processes=True`` is for work that holds it (pydensecrf): ``function`` and the items
    must then pickle, and workers are spawned, not forked (safe beside torch threads).
    ``workers`` is capped at the process's thread budget (:mod:`tagseg.threads`).
    """
    workers = worker_count(workers)
    if workers <= 1:
        yield from track(map(function, items), total, description)
        return
    executor = (ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
                if processes else ThreadPoolExecutor(max_workers=workers))
    pending: deque[Future] = deque()
    try:
        with progress_bar() as progress:
            task = progress.add_task(description, total=total)
            for item in items:
                pending.append(executor.submit(function, item))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
                    progress.advance(task)
            while pending:
                yield pending.popleft().result()
                progress.advance(task)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
