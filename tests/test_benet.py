"""BES's BENet and its relaxed boundary loss (eq. 4), and BENet as a boundary source for the walk (eq. 5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tagseg.losses import relaxed_boundary_loss
from tagseg.models.affinity import BENet, BoundaryNet, build_affinity_model
from tagseg.models.backbones import create_backbone
from tagseg.refine.bes import BACKGROUND, BOUNDARY, FOREGROUND
from tagseg.refine.random_walk import neighbor_offsets, path_affinities
from tagseg.stages.random_walk import image_affinities
from tagseg.stages.train_affinity import AffinityTrainConfig


def test_relaxed_boundary_loss_matches_hand_computed_terms():
    p = torch.tensor([[[0.25, 0.64, 0.5, 0.1, 0.9]]], requires_grad=True)
    labels = torch.tensor([[[BOUNDARY, BOUNDARY, FOREGROUND, BACKGROUND, 255]]])
    out = relaxed_boundary_loss(p, labels == BOUNDARY, labels == FOREGROUND, labels == BACKGROUND)
    boundary = (-math.sqrt(0.25) * math.log(0.25) - math.sqrt(0.64) * math.log(0.64)) / 2
    foreground, background = -math.log(1 - 0.5), -math.log(1 - 0.1)
    assert out["boundary"].item() == pytest.approx(boundary, rel=1e-5)
    assert out["foreground"].item() == pytest.approx(foreground, rel=1e-5)
    assert out["background"].item() == pytest.approx(background, rel=1e-5)
    assert out["loss"].item() == pytest.approx(boundary + (foreground + background) / 2, rel=1e-5)

    out["loss"].backward()
    # W = sqrt(P) is a weight only: d/dP of -W log P is -W / P; were W differentiated, the 0.25 pixel
    # would get an extra -log(P) / (2 sqrt(P)) = +1.386, i.e. -0.307 instead of -1.0 (both halved by the mean)
    expected = [-math.sqrt(0.25) / 0.25 / 2, -math.sqrt(0.64) / 0.64 / 2, 1 / (1 - 0.5) / 2, 1 / (1 - 0.1) / 2, 0.0]
    np.testing.assert_allclose(p.grad[0, 0].numpy(), expected, rtol=1e-5)


def test_relaxed_boundary_loss_with_empty_sets_and_saturated_probabilities():
    p = torch.tensor([[[0.0, 1.0]]])
    nothing = torch.zeros_like(p, dtype=torch.bool)
    out = relaxed_boundary_loss(p, nothing, nothing, nothing)
    assert out["loss"].item() == 0.0
    everything = torch.tensor([[[True, False]]])
    clamped = relaxed_boundary_loss(p, everything, ~everything, nothing)
    assert math.isfinite(clamped["loss"].item())  # P clamped to [1e-4, 1 - 1e-4], as the authors' code does


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return create_backbone("efficientnet_lite0", weights=None)


def test_benet_reads_every_level_at_stride_4_and_trains_only_its_head(backbone):
    net = BENet(backbone)
    levels = len(backbone.level_channels)
    assert len(net.branches) == levels and net.head.in_channels == 32 * levels
    assert all(not isinstance(m, torch.nn.ReLU) for branch in net.branches for m in branch)  # ReLU after resizing
    net.train()
    images = torch.randn(2, 3, 64, 48)
    boundary = net.boundary(images)
    assert boundary.shape == (2, 16, 12) and 0 < boundary.min() and boundary.max() < 1
    labels = torch.full((2, 16, 12), 255, dtype=torch.uint8)
    labels[:, :, :5], labels[:, :, 5], labels[:, :, 6:] = FOREGROUND, BOUNDARY, BACKGROUND
    net.boundary_loss(images, labels)["loss"].backward()
    assert all(p.grad is None for p in net.backbone.parameters())
    assert all(p.grad is not None for m in net.new_modules() for p in m.parameters())
    assert not net.backbone.training  # BatchNorm statistics stay ImageNet's


def test_unfrozen_backbone_gets_gradients(backbone):
    net = build_affinity_model("benet", create_backbone("efficientnet_lite0", weights=None), freeze_backbone=False)
    net.train()
    net.boundary(torch.randn(1, 3, 32, 32)).mean().backward()
    assert any(p.grad is not None for p in net.backbone.parameters())


def test_benet_affinities_for_the_walk_are_its_path_affinities(backbone):
    net = BENet(backbone).eval()
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    offsets = neighbor_offsets(3)
    affinities, boundary = image_affinities(net, image, offsets, flip=False, device="cpu")
    assert boundary.shape == (10, 14)
    torch.testing.assert_close(affinities, path_affinities(boundary, offsets))


def test_irn_boundary_net_keeps_its_layout(backbone):
    """Models trained before BENet existed must still load: same parameter names as then."""
    names = set(BoundaryNet(backbone).state_dict()) - set(f"backbone.{k}" for k in backbone.state_dict())
    assert names == {*(f"branches.{i}.{j}.{w}" for i in range(len(backbone.level_channels) - 1)
                       for j, w in ((0, "weight"), (1, "weight"), (1, "bias"))),
                     "fuse.0.weight", "fuse.1.weight", "fuse.1.bias", "head.weight", "head.bias"}


def test_train_config_picks_the_label_stage_by_kind():
    assert AffinityTrainConfig(kind="benet").labels_stage == "boundary_labels"
    assert AffinityTrainConfig(kind="boundary").labels_stage == "affinity_labels"
    assert AffinityTrainConfig(kind="benet", labels="my_labels").labels_stage == "my_labels"
    identity = AffinityTrainConfig().identity()
    assert "labels" not in identity and "freeze_backbone" not in identity  # runs made before the keys stay valid
    assert AffinityTrainConfig(freeze_backbone=False).identity()["freeze_backbone"] is False
