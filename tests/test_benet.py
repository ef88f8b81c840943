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


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from tagseg.data.make_synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_dataset(root, 6, seed=3, size=(64, 48), val_fraction=0.34)
    return root


def test_bes_chain_boundary_labels_benet_maps_walk(synthetic, tmp_path):
    """boundary_labels -> train_affinity (benet) -> boundary_maps -> random_walk -> pseudo_labels, resumable."""
    from tagseg.data.dataset import open_dataset
    from tagseg.data.imageio import read_boundary_map
    from tagseg.errors import DataError, StageError
    from tagseg.stages.boundary_labels import BoundaryLabelsConfig, make_boundary_labels
    from tagseg.stages.boundary_maps import BoundaryMapsConfig, make_boundary_maps
    from tagseg.stages.pseudo_labels import PseudoLabelConfig, make_pseudo_labels
    from tagseg.stages.random_walk import RandomWalkConfig, random_walk_stage
    from tagseg.stages.train_affinity import train_affinity
    from test_perimeterfit_stage import fake_cams

    dataset = open_dataset(synthetic, "train")
    fake_cams(dataset, tmp_path)
    config = AffinityTrainConfig(kind="benet", epochs=2, min_steps=0, batch_size=2, crop_size=64)
    with pytest.raises(StageError, match="boundary_labels"):
        train_affinity(dataset, tmp_path, config)  # BENet trains on boundary labels, not on seeds
    make_boundary_labels(dataset, tmp_path, BoundaryLabelsConfig(fg_threshold=0.9, bg_threshold=0.75, window=65.0))
    trained = train_affinity(dataset, tmp_path, config)
    history = trained["history"]
    assert [h["epoch"] for h in history] == [1, 2] and np.isfinite(history[-1]["loss"])
    assert {"boundary", "foreground", "background"} <= set(history[-1])

    maps = make_boundary_maps(dataset, tmp_path, BoundaryMapsConfig())
    scored = maps["boundary_metrics"]
    assert scored["num_images"] == len(dataset) and 0 <= scored["metrics"]["f"] <= 1
    for record in dataset.records:
        boundary = read_boundary_map(tmp_path / "boundary_maps" / f"{record.id}.png")
        assert boundary.shape == (48, 64) and 0 <= boundary.min() and boundary.max() <= 1
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "boundary_maps").glob("*.png")}
    assert make_boundary_maps(dataset, tmp_path, BoundaryMapsConfig())["timings"]["items_computed"] == len(dataset)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    with pytest.raises(StageError, match="different 'boundary_maps' stage config"):
        make_boundary_maps(dataset, tmp_path, BoundaryMapsConfig(flip=False))
    from typer.testing import CliRunner

    from tagseg.cli import app

    result = CliRunner().invoke(app, ["boundary-maps", str(synthetic), str(tmp_path), "--device", "cpu",
                                      "--set", "tolerance=3"])
    assert result.exit_code == 0, result.output
    assert "boundary_maps: best F" in result.output and "tolerance 3 px, 4 images" in result.output

    walk = RandomWalkConfig(beta=5, logt=4, radius=3, boundary_mask=True, normalize="global")
    walked = random_walk_stage(dataset, tmp_path, walk)
    assert "metrics" in walked and 0 < walked["label_free"]["threshold"] < 1
    masks = make_pseudo_labels(dataset, tmp_path, PseudoLabelConfig(crf=False))
    assert masks["metrics"]["miou"] > 0

    from tagseg.report import write_report

    page = write_report(tmp_path, dataset_root=synthetic, split="train", gallery_size=2).read_text()
    assert "<h2>Boundaries</h2><p>Boundary labels: boundary" in page and "best F" in page
    assert "_boundary_labels.png" in page and "_boundary_map.png" in page

    affinitynet = tmp_path / "affinitynet"
    (affinitynet / "train_affinity").mkdir(parents=True)
    saved = torch.load(tmp_path / "train_affinity" / "model.pt", weights_only=False)
    net = build_affinity_model("affinitynet", create_backbone("efficientnet_lite0", weights=None))
    torch.save({"state_dict": net.state_dict(), "config": {**saved["config"], "kind": "affinitynet"}},
               affinitynet / "train_affinity" / "model.pt")
    with pytest.raises(StageError, match="affinitynet network, which predicts no boundary map"):
        make_boundary_maps(dataset, affinitynet, BoundaryMapsConfig())
    with pytest.raises(DataError, match="no trained affinity network"):
        make_boundary_maps(dataset, tmp_path / "nothing", BoundaryMapsConfig())
