"""One thread budget per process, so a run never asks for more CPU threads than it was given.

Oversubscribed cores are slow in the worst way: two torch processes that each spin two OpenMP
threads on a 2-core machine each ran about 9x slower (a DeepLab epoch of 7 s took 65 s). The
budget (``tagseg --threads N``, default: the cores this process may use) sets torch's and
OpenCV's intra-op threads and caps the per-image worker pools and the data-loader workers at N
(torch runs each data-loader worker single-threaded; OpenCV must not be reconfigured inside a
forked worker: that hung once the parent had used its thread pool).
"""

from __future__ import annotations

import os

_budget: int | None = None


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def set_threads(threads: int | None = None) -> int:
    """Make ``threads`` this process's budget and return it. None keeps the libraries' own default,
    every available core (so commands that never compute need not import torch)."""
    global _budget
    _budget = threads
    if threads is not None:
        import cv2
        import torch

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
    return thread_budget()


def thread_budget() -> int:
    """The budget set by :func:`set_threads`, else every available core."""
    return _budget or available_cores()


def worker_count(workers: int) -> int:
    """``workers`` capped at the thread budget (at least 1)."""
    return max(1, min(workers, thread_budget()))

