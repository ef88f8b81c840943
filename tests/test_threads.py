"""The thread budget: torch / OpenCV threads, worker caps, single-threaded loader workers, the CLI option."""

from __future__ import annotations

import cv2
import pytest
import torch
from typer.testing import CliRunner

from tagseg import threads
from tagseg.cli import app
from tagseg.progress import parallel_map
from tagseg.training import epoch_loader


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads(), cv2.getNumThreads()
    yield
    threads.set_threads(None)
    torch.set_num_threads(before[0])
    cv2.setNumThreads(before[1])


def test_budget_sets_library_threads_and_caps_workers(restore_threads):
    assert threads.set_threads(1) == 1
    assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
    assert threads.worker_count(4) == 1 and threads.worker_count(0) == 1
    assert threads.set_threads(None) == threads.available_cores()
    assert threads.worker_count(10_000) == threads.available_cores()


class ThreadCounts(torch.utils.data.Dataset):
    epoch = 0

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.tensor([torch.get_num_threads()])


def test_loader_workers_are_single_threaded(restore_threads):
    threads.set_threads(2)
    loader = epoch_loader(ThreadCounts(), batch_size=2, seed=0, epoch=0, workers=2)
    assert loader.num_workers == 2
    counts = torch.cat(list(loader))
    assert counts.tolist() == [[1]] * 4
    threads.set_threads(1)
    assert epoch_loader(ThreadCounts(), batch_size=2, seed=0, epoch=0, workers=2).num_workers == 0


def test_parallel_map_keeps_order_under_a_budget_of_one(restore_threads):
    threads.set_threads(1)
    assert list(parallel_map(lambda x: x * x, range(6), 6, "squares", workers=4)) == [0, 1, 4, 9, 16, 25]


def test_cli_threads_option(restore_threads):
    result = CliRunner().invoke(app, ["--threads", "1", "--version"])
    assert result.exit_code == 0 and torch.get_num_threads() == 1
    result = CliRunner().invoke(app, ["--threads", "0", "--version"])
    assert result.exit_code != 0 and "--threads" in result.output
    result = CliRunner().invoke(app, ["--version"], env={"TAGSEG_THREADS": "1"})
    assert result.exit_code == 0 and threads.thread_budget() == 1
