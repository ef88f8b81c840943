"""The shared training loop: step budgets, poly LR over the steps, cut-short last pass, exact resume."""

from __future__ import annotations

import pytest
import torch

from tagseg.rundir import stage_dir
from tagseg.training import train_epochs, training_steps


@pytest.mark.parametrize("items, batch, epochs, steps, min_steps, expected", [
    (346, 8, 5, None, 200, 215),   # msrc-voc train: 43 steps a pass, the epochs decide
    (250, 8, 5, None, 200, 200),   # a small set: 155 steps by epochs, raised to the floor
    (250, 8, 5, None, 0, 155),
    (250, 8, 5, 50, 200, 50),      # explicit steps win
    (10_582, 8, 5, None, 200, 6_610),
])
def test_training_steps(items, batch, epochs, steps, min_steps, expected):
    assert training_steps(items, batch, epochs, steps, min_steps) == expected


class Numbers(torch.utils.data.Dataset):
    epoch = 0

    def __len__(self):
        return 10

    def __getitem__(self, index):
        return torch.tensor([float(index)]), torch.tensor([2.0 * index])


def _train(path, steps, stop_after_pass=None):
    torch.manual_seed(0)
    net = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD([{"params": net.parameters(), "lr": 0.01, "base_lr": 0.01}])
    rates, seen = [], []

    def step_loss(batch, step, total):
        rates.append(optimizer.param_groups[0]["lr"])
        seen.append((step, total))
        x, y = batch
        return {"loss": ((net(x) - y) ** 2).mean()}

    with stage_dir(path, "train", {}) as stage:
        if stop_after_pass is not None:
            original = stage.record

            def record(**fields):
                original(**fields)
                if len(fields.get("history", [])) == stop_after_pass:
                    raise KeyboardInterrupt
            stage.record = record
        history, ran = train_epochs(net, optimizer, stage, path / "checkpoint.pt", crops=Numbers(), steps=steps,
                                    batch_size=4, seed=0, workers=1, step_loss=step_loss, set_train_mode=net.train,
                                    device="cpu", name="test")
    return net, history, ran, rates, seen


def test_steps_cut_the_last_pass_short_and_the_rate_decays_over_them(tmp_path):
    _, history, ran, rates, seen = _train(tmp_path / "a", steps=5)  # 2 steps a pass: 2 + 2 + 1
    assert ran == 5 and [h["steps"] for h in history] == [2, 2, 1] and [h["epoch"] for h in history] == [1, 2, 3]
    assert seen == [(k, 5) for k in range(5)]
    assert rates == pytest.approx([0.01 * (1 - k / 5) ** 0.9 for k in range(5)])


def test_resume_mid_schedule_equals_an_uninterrupted_run(tmp_path):
    whole, *_ = _train(tmp_path / "whole", steps=5)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "split", steps=5, stop_after_pass=2)
    resumed, history, ran, _, seen = _train(tmp_path / "split", steps=5)
    assert ran == 1 and seen == [(4, 5)] and [h["steps"] for h in history] == [2, 2, 1]
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
