"""The structure-aware smoothing branch: S, L_B, L_S by hand, the SBDM, every head with the branch,
and train_cam with it (fine-tune, resume, refusals, inference unchanged)."""

import math

import numpy as np
import pytest
import torch

from tagseg.data.dataset import open_dataset
from tagseg.data.imageio import write_mask
from tagseg.data.make_synthetic import write_synthetic_dataset
from tagseg.errors import ConfigError, DataError, StageError
from tagseg.models.backbones import create_backbone
from tagseg.models.cam import HEADS, build_cam_net
from tagseg.models.smoothing import (CHARBONNIER_EPS, BoundaryModule, SmoothedCamNet, boundary_loss, canny_edges,
                                     class_boundaries, smoothness_loss, smoothness_term, spread_levels)
from tagseg.stages.train_cam import CamTrainConfig, build_trainee, load_cam_net, train_cam

FLOOR = math.sqrt(CHARBONNIER_EPS)  # Psi(0)


def square_labels(size: int = 8, cls: int = 1) -> torch.Tensor:
    labels = torch.zeros(1, size, size, dtype=torch.long)
    labels[0, 2:6, 2:6] = cls
    return labels


def test_class_boundaries_are_the_one_pixel_inner_ring():
    real = torch.ones(1, 8, 8, dtype=torch.bool)
    boundaries = class_boundaries(square_labels(), 2, real)
    ring = torch.zeros(8, 8)
    ring[2:6, 2:6] = 1
    ring[3:5, 3:5] = 0
    assert torch.equal(boundaries[0, 0], ring)
    assert not boundaries[0, 1].any()  # class 2 is absent
    # a mask reaching the image edge or the crop padding has no boundary there
    labels = torch.ones(1, 8, 8, dtype=torch.long)
    real[0, :, 6:] = False
    labels[0, :, 6:] = 255
    edge = class_boundaries(labels, 1, real)[0, 0]
    assert not edge.any()


def test_boundary_loss_by_hand():
    logits = torch.zeros(1, 2, 2, 2)  # sigmoid 0.5: log 2 per pixel whatever S is
    boundaries = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    tags = torch.tensor([[1.0, 0.0]])
    real = torch.ones(1, 2, 2, dtype=torch.bool)
    assert boundary_loss(logits, boundaries, tags, real).item() == pytest.approx(math.log(2))
    logits[0, 0, 0, 0] = 2.0  # the boundary pixel: -log sigmoid(2); class 2 is untagged and ignored
    expected = (math.log(1 + math.exp(-2)) + 3 * math.log(2)) / 4
    assert boundary_loss(logits, boundaries, tags, real).item() == pytest.approx(expected)
    real[0, 1, :] = False  # padding: left out
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert boundary_loss(logits, boundaries, tags, real).item() == pytest.approx(expected)


def test_smoothness_first_order_by_hand():
    scores = torch.tensor([[[[0.0, 0.5, 1.0]]]])  # 1 x 3: x differences 0.5, 0.5; no y differences
    boundaries = torch.tensor([[[[0.0, 1.0, 1.0]]]])  # |dS| = 1, 0
    tags = torch.ones(1, 1)
    real = torch.ones(1, 1, 3, dtype=torch.bool)
    psi = [math.sqrt((0.5 * math.exp(-10)) ** 2 + CHARBONNIER_EPS), math.sqrt(0.25 + CHARBONNIER_EPS)]
    assert smoothness_term(scores, boundaries, tags, real, 1, alpha=10).item() == pytest.approx(sum(psi) / 2)
    # second order: one x position, d2C = 0, d2S = 1 - 2 + 0 = -1
    assert smoothness_term(scores, boundaries, tags, real, 2, alpha=10).item() == pytest.approx(FLOOR)
    parts = smoothness_loss(scores, boundaries, tags, real, alpha=10, lambda_s=10)
    assert parts["loss"].item() == pytest.approx(parts["first"].item() + 10 * parts["second"].item())
    code = smoothness_loss(scores, boundaries, tags, real, alpha=10, lambda_s=10, lambda_s_on="first")
    assert code["loss"].item() == pytest.approx(10 * parts["first"].item() + parts["second"].item())


def test_smoothness_is_flat_inside_the_boundaries_and_grows_at_a_step_away_from_them():
    labels = square_labels(12)
    real = torch.ones(1, 12, 12, dtype=torch.bool)
    boundaries = class_boundaries(labels, 1, real)
    tags = torch.ones(1, 1)
    inside = (labels[:, None] == 1).float()  # constant inside S's region, a step exactly at its boundary
    flat = smoothness_loss(inside, boundaries, tags, real)
    # every term is Psi(0) = 1e-3 up to exp(-10) leaks: per order 2 directions x Psi(0)
    assert flat["first"].item() == pytest.approx(2 * FLOOR, rel=0.05)
    assert flat["second"].item() == pytest.approx(2 * FLOOR, rel=0.05)
    shifted = torch.roll(inside, 3, dims=-1)  # the same step, away from S's boundary
    assert smoothness_loss(shifted, boundaries, tags, real)["loss"] > 50 * flat["loss"]
    untagged = smoothness_loss(shifted, boundaries, torch.zeros(1, 1), real)
    assert untagged["loss"].item() == 0.0


def test_smoothness_skips_differences_that_touch_the_padding():
    scores = torch.tensor([[[[0.2, 0.2, 0.9]]]])
    boundaries = torch.zeros(1, 1, 1, 3)
    real = torch.tensor([[[True, True, False]]])
    term = smoothness_term(scores, boundaries, torch.ones(1, 1), real, 1, alpha=10)
    assert term.item() == pytest.approx(FLOOR)  # only the (0, 1) difference counts


def test_canny_edges_ignore_the_padding_outline():
    crop = np.zeros((32, 32, 3), np.uint8)
    crop[:, :16] = 200  # a vertical step at x = 16 ...
    real = np.zeros((32, 32), bool)
    real[:, :24] = True  # ... and padding from x = 24, where the image (black) meets the black canvas
    crop[:, 16:24] = 40
    edges = canny_edges(crop, real, 50, 100)
    assert edges[:, 15:17].any() and not edges[:, 20:].any()
    assert edges.dtype == np.float32 and set(np.unique(edges)) <= {0.0, 1.0}


def test_spread_levels():
    assert spread_levels(5) == [0, 1, 3, 4]
    assert spread_levels(4) == [0, 1, 2, 3]
    assert spread_levels(3) == [0, 1, 2]


def test_sbdm_fuses_each_class_with_the_edges_by_a_depthwise_conv():
    module = BoundaryModule([8, 16, 24, 32, 40], num_classes=3, channels=4)
    levels = [torch.randn(2, c, 16 // 2 ** min(i, 2), 16 // 2 ** min(i, 2)) for i, c in enumerate([8, 16, 24, 32, 40])]
    edges = torch.rand(2, 32, 32)
    assert module(levels, edges).shape == (2, 3, 32, 32)
    with torch.no_grad():
        module.with_edges.bias.zero_()
        module.with_edges.weight.copy_(torch.tensor([[0.0, 1.0], [0.0, 2.0], [1.0, 0.0]])[:, :, None, None])
        out = module(levels, edges)
        initial = module.initial(torch.cat([torch.nn.functional.interpolate(
            reduce(levels[i]), size=(32, 32), mode="bilinear", align_corners=False)
            for i, reduce in zip(module.levels, module.reduce)], dim=1))
    torch.testing.assert_close(out[:, 0], edges)
    torch.testing.assert_close(out[:, 1], 2 * edges)
    torch.testing.assert_close(out[:, 2], initial[:, 2])


@pytest.mark.parametrize("head", HEADS)
def test_every_head_trains_a_step_with_the_branch(head):
    torch.manual_seed(0)
    net = build_cam_net(head, create_backbone("efficientnet_lite0", weights=None), 3, dilations=(2,), dilated_hidden=16)
    trainee = SmoothedCamNet(net, channels=8)
    images = torch.randn(2, 3, 64, 64)
    targets = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    labels = torch.randint(0, 4, (2, 64, 64))
    real = torch.ones(2, 64, 64, dtype=torch.bool)
    real[:, 56:] = False
    parts = trainee.loss(images, targets, 1, 10, None, real=real, labels=labels, edges=torch.zeros(2, 64, 64))
    expected = parts["head"] + 0.05 * parts["boundary"] + parts["smooth"]
    assert parts["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    parts["loss"].backward()
    assert all(p.grad is not None for p in trainee.branch.parameters())
    assert all(p.grad is not None for m in net.new_modules() for p in m.parameters())


@pytest.fixture(scope="module")
def synthetic_with_segmentation(tmp_path_factory):
    """Synthetic data plus a folder of label PNGs standing in for an earlier run's pseudo-labels."""
    root = tmp_path_factory.mktemp("smooth") / "data"
    write_synthetic_dataset(root, 32, seed=1, size=(64, 48), val_fraction=0.25)
    dataset = open_dataset(root, "train")
    folder = root.parent / "earlier" / "pseudo_labels"
    for record in dataset.records:
        write_mask(folder / f"{record.id}.png", dataset.load_mask(record))
    return dataset, folder


TINY = dict(epochs=2, min_steps=0, batch_size=4, crop_size=64, lr=0.001, scale_range=(0.9, 1.1), weights=None,
            holdout_fraction=0)


def test_train_cam_with_the_branch_fine_tunes_resumes_and_keeps_the_head_alone(synthetic_with_segmentation,
                                                                              tmp_path, interrupted):
    dataset, folder = synthetic_with_segmentation
    base = train_cam(dataset, tmp_path / "base", CamTrainConfig(**TINY))
    init = tmp_path / "base" / "train_cam" / "model.pt"
    config = CamTrainConfig(**{**TINY, "epochs": 2}, init=init, smoothing={"boundaries": folder, "channels": 8})
    whole = train_cam(dataset, tmp_path / "whole", config)
    assert {"boundary", "smooth", "head", "cls"} <= set(whole["history"][0])
    assert whole["config"]["smoothing"]["boundaries"] == str(folder)
    assert whole["config"]["init_digest"] and whole["config"]["boundaries_source"] is None  # no manifest there
    started = build_trainee(config, dataset.class_names).head.state_dict()  # the fine-tune starts from base
    base_state = torch.load(init, weights_only=False)["state_dict"]
    assert base["status"] == "complete" and all(torch.equal(started[k], base_state[k]) for k in base_state)

    saved = torch.load(tmp_path / "whole" / "train_cam" / "model.pt", weights_only=False)["state_dict"]
    assert not any(k.startswith("branch") for k in saved)
    head, _ = load_cam_net(tmp_path / "whole" / "train_cam" / "model.pt")
    trained = torch.load(tmp_path / "whole" / "train_cam" / "checkpoint.pt", weights_only=False)["model"]
    assert any(k.startswith("branch.") for k in trained)
    wrapped = SmoothedCamNet(build_cam_net("cam", create_backbone("efficientnet_lite0", weights=None),
                                           dataset.num_classes - 1), channels=8)
    wrapped.load_state_dict(trained)
    images = torch.randn(1, 3, 48, 64)
    torch.testing.assert_close(head.cams(images), wrapped.eval().head.cams(images))  # inference: the branch dropped

    interrupted(train_cam, dataset, tmp_path / "split", config)
    resumed = train_cam(dataset, tmp_path / "split", config)
    assert resumed["history"] == [{**h, "seconds": r["seconds"]} for h, r in zip(whole["history"], resumed["history"])]
    again = torch.load(tmp_path / "split" / "train_cam" / "model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(saved[k], again[k]) for k in saved)

    changed = config.model_copy(update={"smoothing": config.smoothing.model_copy(update={"lambda_smooth": 2.0})})
    with pytest.raises(StageError, match="smoothing.lambda_smooth"):
        train_cam(dataset, tmp_path / "whole", changed)


def test_joint_training_from_the_start(synthetic_with_segmentation, tmp_path):
    dataset, folder = synthetic_with_segmentation
    config = CamTrainConfig(**{**TINY, "head": "seam", "epochs": 1}, smoothing={"boundaries": folder, "channels": 8})
    manifest = train_cam(dataset, tmp_path, config)
    assert {"er", "ecr", "boundary", "smooth"} <= set(manifest["history"][0])
    assert "init_digest" not in manifest["config"] and "init" not in manifest["config"]


def test_branch_inputs_are_checked_before_training(synthetic_with_segmentation, tmp_path):
    dataset, folder = synthetic_with_segmentation
    with pytest.raises(ConfigError, match="is not a folder"):
        train_cam(dataset, tmp_path / "a", CamTrainConfig(**TINY, smoothing={"boundaries": tmp_path / "nowhere"}))
    partial = tmp_path / "partial"
    partial.mkdir()
    first = dataset.records[0].id
    (partial / f"{first}.png").write_bytes((folder / f"{first}.png").read_bytes())
    with pytest.raises(ConfigError, match=rf"no label map for {len(dataset) - 1} of {len(dataset)} training images"):
        train_cam(dataset, tmp_path / "b", CamTrainConfig(**TINY, smoothing={"boundaries": partial}))
    with pytest.raises(ConfigError, match="does not exist"):
        train_cam(dataset, tmp_path / "c", CamTrainConfig(**TINY, init=tmp_path / "no.pt"))
    train_cam(dataset, tmp_path / "base", CamTrainConfig(**{**TINY, "epochs": 1}))
    mismatched = CamTrainConfig(**{**TINY, "head": "seam"}, init=tmp_path / "base" / "train_cam" / "model.pt")
    with pytest.raises(ConfigError, match="does not fit this config"):
        train_cam(dataset, tmp_path / "d", mismatched)
    with pytest.raises(ValueError, match="canny"):
        CamTrainConfig(smoothing={"boundaries": folder, "canny": [200, 100]})
    assert not {"smoothing", "init"} & set(CamTrainConfig().identity())  # runs made before these keys still match


def test_fine_tune_without_the_branch_starts_from_the_trained_head(synthetic_with_segmentation, tmp_path):
    dataset, _ = synthetic_with_segmentation
    train_cam(dataset, tmp_path / "base", CamTrainConfig(**{**TINY, "epochs": 1}))
    init = tmp_path / "base" / "train_cam" / "model.pt"
    config = CamTrainConfig(**{**TINY, "epochs": 1}, init=init)
    trainee = build_trainee(config, dataset.class_names)
    base_state = torch.load(init, weights_only=False)["state_dict"]
    assert all(torch.equal(trainee.state_dict()[k], base_state[k]) for k in base_state)
    manifest = train_cam(dataset, tmp_path / "more", config)
    assert manifest["config"]["init"] == str(init) and "boundary" not in manifest["history"][0]


def test_a_label_map_of_the_wrong_size_is_refused_before_training(synthetic_with_segmentation, tmp_path):
    dataset, folder = synthetic_with_segmentation
    copy = tmp_path / "labels"
    copy.mkdir()
    for png in folder.glob("*.png"):
        (copy / png.name).write_bytes(png.read_bytes())
    first = dataset.records[0]
    write_mask(copy / f"{first.id}.png", np.zeros((10, 12), np.uint8))
    with pytest.raises(DataError, match=rf"{first.id}\.png: label map of 12x10 px does not match image"):
        train_cam(dataset, tmp_path / "run", CamTrainConfig(**TINY, smoothing={"boundaries": copy}))
    assert not (tmp_path / "run").exists()  # refused before the stage directory was made
