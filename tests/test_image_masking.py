"""Dissertation ch. 2: saliency sources, eq. 2.4-2.6 refinement, the saliency and attention losses (eq. 2.7-2.12),
and the saliency / refine_saliency / train_seg stages on tiny synthetic data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from tagseg.data.dataset import open_dataset
from tagseg.data.imageio import IGNORE_INDEX, read_mask, read_saliency_map
from tagseg.data.make_synthetic import write_synthetic_dataset
from tagseg.errors import DataError, StageError
from tagseg.models.backbones import create_backbone
from tagseg.models.cam import build_cam_net
from tagseg.models.image_masking import (attention_loss, attention_map, masked_image, masking_attention_loss,
                                         renormalize, saliency_loss)
from tagseg.pipeline import load_recipe
from tagseg.refine.saliency import binarize, class_agnostic_activation, opencv_saliency, refine_saliency
from tagseg.stages.make_cam import MakeCamConfig, make_cams, multiscale_cams
from tagseg.stages.refine_saliency import RefineSaliencyConfig, make_refined_saliency
from tagseg.stages.saliency import SaliencyConfig, make_saliency
from tagseg.stages.train_cam import CamTrainConfig, train_cam
from tagseg.stages.train_seg import SegTrainConfig, train_seg

CAM = dict(epochs=1, min_steps=0, batch_size=2, crop_size=64, weights=None, head="dilated", dilations=(3,))
SEG = dict(epochs=1, min_steps=0, batch_size=2, crop_size=64, weights=None, head="deeplabv2")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_dataset(root, 6, seed=4, size=(64, 48), val_fraction=0.34)
    return root


# --- eq. 2.4-2.6 -------------------------------------------------------------------------------------------

def test_refinement_takes_each_branch_of_eq_2_6():
    activation = np.array([[0.9, 0.9, 0.5, 0.1],
                           [0.9, 0.9, 0.5, 0.1],
                           [0.2, 0.2, 0.5, 0.1],
                           [0.2, 0.2, 0.5, 0.85]], np.float32)
    saliency = np.array([[0, 1, 0, 1],
                         [0, 1, 1, 0],
                         [1, 0, 1, 1],
                         [0, 0, 255, 255]], np.uint8)
    refined = refine_saliency(activation, saliency, tau1=0.8, tau2=0.3)
    expected = np.array([[1, 1, 0, 255],      # B > tau1 and O = 0 -> 1; B < tau2 and O = 1 -> unlabelled
                         [1, 1, 1, 0],        # in between: O as it is
                         [255, 0, 1, 255],
                         [0, 0, 255, 255]], np.uint8)  # void stays void, even where B > tau1
    np.testing.assert_array_equal(refined, expected)


def test_class_agnostic_activation_is_the_max_over_tagged_maps():
    scores = np.stack([np.full((2, 3), 0.2, np.float32), np.eye(2, 3, dtype=np.float32)])
    np.testing.assert_array_equal(class_agnostic_activation(scores), np.maximum(scores[0], scores[1]))
    assert class_agnostic_activation(np.zeros((0, 2, 3), np.float32)).shape == (2, 3)


def test_binarize_at_a_number_and_at_otsu():
    values = np.array([[0.1, 0.2, 0.8, 0.9]], np.float32)
    np.testing.assert_array_equal(binarize(values, 0.5), [[0, 0, 1, 1]])
    np.testing.assert_array_equal(binarize(values, "otsu"), [[0, 0, 1, 1]])
    assert binarize(np.full((3, 3), 0.7, np.float32), "otsu").sum() == 0  # nothing to split


@pytest.mark.parametrize("method", ["spectral_residual", "fine_grained"])
def test_opencv_saliency_finds_a_small_bright_square(method):
    image = np.full((64, 64, 3), 40, np.uint8)
    image[28:36, 28:36] = 255
    values = opencv_saliency(image, method)
    assert values.shape == (64, 64) and values.min() >= 0 and values.max() == pytest.approx(1.0)
    assert values[28:36, 28:36].mean() > values.mean() + 0.1


def test_make_cam_reduce_max_is_the_max_over_scales(synthetic, tmp_path):
    net = build_cam_net("cam", create_backbone(weights=None), 3).eval()
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8)
    per_scale = [multiscale_cams(net, [image], [s], False, "cpu") for s in (0.5, 1.0, 1.5)]
    combined = multiscale_cams(net, [image], (0.5, 1.0, 1.5), False, "cpu", reduce="max")
    torch.testing.assert_close(combined, torch.maximum(torch.maximum(per_scale[0], per_scale[1]), per_scale[2]))
    summed = multiscale_cams(net, [image], (0.5, 1.0, 1.5), False, "cpu")
    torch.testing.assert_close(summed, per_scale[0] + per_scale[1] + per_scale[2])


# --- eq. 2.7-2.11 ------------------------------------------------------------------------------------------

def test_saliency_loss_matches_a_hand_computation():
    # one image, 3 classes (background + 2), 1 x 3 pixels; class 1 tagged, class 2 not
    logits = torch.tensor([[[[0.0, 1.0, 2.0]], [[1.0, 0.0, 0.0]], [[3.0, 3.0, 3.0]]]])
    saliency = torch.tensor([[[0, 1, 255]]])
    tags = torch.tensor([[1.0, 0.0]])
    p = torch.softmax(logits, dim=1)[0, :, 0]
    expected = -math.log(p[0, 0]) - math.log(p[1, 1])  # background pixel 0; foreground pixel 1 (tagged class only)
    assert saliency_loss(logits, saliency, tags).item() == pytest.approx(expected, rel=1e-6)

    # each set is averaged on its own: two background pixels count as much as one foreground pixel
    saliency = torch.tensor([[[0, 0, 1]]])
    expected = -(math.log(p[0, 0]) + math.log(p[0, 1])) / 2 - math.log(p[1, 2])
    assert saliency_loss(logits, saliency, tags).item() == pytest.approx(expected, rel=1e-6)

    # an image without tags: its foreground pixels have no class to sum and are skipped
    assert saliency_loss(logits, torch.tensor([[[1, 1, 1]]]), torch.zeros(1, 2)).item() == 0.0


def test_masked_image_is_the_image_where_nothing_is_drawn_and_the_mean_colour_where_a_map_is_one():
    pixels = torch.randn(1, 3, 2, 2)
    probabilities = torch.zeros(1, 3, 2, 2)
    probabilities[0, 1, 0, :] = 1.0  # class 1 owns the top row
    probabilities[0, 0, 1, :] = 1.0  # background owns the bottom row
    kept = masked_image(pixels, attention_map(probabilities, torch.tensor([[0, 0]])))
    torch.testing.assert_close(kept, pixels)
    erased = masked_image(pixels, attention_map(probabilities, torch.tensor([[1, 0]])))
    assert (erased[0, :, 0] == 0).all()  # 0 in normalised units: the mean colour
    torch.testing.assert_close(erased[0, :, 1], pixels[0, :, 1])


def test_attention_loss_matches_a_hand_computation():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    tags = torch.tensor([[1.0, 1.0, 0.0]])
    draws = torch.tensor([[1, 0, 0]])  # class 1 erased: target 0; class 2 kept: target 1; class 3 untagged
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = (-math.log(1 - sigmoid(2.0)) - math.log(sigmoid(-1.0))) / 2
    assert attention_loss(logits, tags, draws).item() == pytest.approx(expected, rel=1e-6)
    assert attention_loss(logits, torch.zeros(1, 3), torch.zeros(1, 3)).item() == 0.0


def test_renormalize_converts_between_backbone_statistics():
    pixels = torch.randn(1, 3, 2, 2)
    assert renormalize(pixels, (0.5,) * 3, (0.25,) * 3, (0.5,) * 3, (0.25,) * 3) is pixels
    there = renormalize(pixels, (0.5,) * 3, (0.25,) * 3, (0.4, 0.5, 0.6), (0.2, 0.3, 0.4))
    torch.testing.assert_close(renormalize(there, (0.4, 0.5, 0.6), (0.2, 0.3, 0.4), (0.5,) * 3, (0.25,) * 3), pixels)


def test_one_step_trains_the_segmenter_and_leaves_the_classifier_bit_identical():
    torch.manual_seed(0)
    classifier = build_cam_net("dilated", create_backbone(weights=None), 2, dilated_hidden=8)
    classifier.eval().requires_grad_(False)
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    from tagseg.models.segmentation import build_segmentation_net

    segmenter = build_segmentation_net("deeplabv2", create_backbone(weights=None), 3).train()
    weights = {k: v.clone() for k, v in segmenter.state_dict().items()}
    optimizer = torch.optim.SGD(segmenter.parameters(), lr=0.1)
    images = torch.randn(2, 3, 32, 32, requires_grad=True)
    tags = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    logits = segmenter(images)
    logits.retain_grad()
    loss = masking_attention_loss(classifier, images, logits, tags, None, 2, torch.Generator().manual_seed(1),
                                  (classifier.backbone.mean, classifier.backbone.std),
                                  (classifier.backbone.mean, classifier.backbone.std))
    loss.backward()
    optimizer.step()
    assert logits.grad.abs().sum() > 0 and images.grad.abs().sum() > 0  # through the masked image
    after = segmenter.state_dict()
    assert any(not torch.equal(weights[k], after[k]) for k in weights)
    for key, value in classifier.state_dict().items():  # weights and BatchNorm statistics alike
        assert torch.equal(before[key], value), key
    assert all(p.grad is None for p in classifier.parameters())


def test_the_paths_batched_together_equal_each_path_alone():
    torch.manual_seed(0)
    classifier = build_cam_net("cam", create_backbone(weights=None), 2).eval().requires_grad_(False)
    pixels, logits = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    tags, valid = torch.tensor([[1.0, 1.0], [0.0, 1.0]]), torch.ones(2, 32, 32, dtype=torch.bool)
    stats = (classifier.backbone.mean, classifier.backbone.std)
    together = masking_attention_loss(classifier, pixels, logits, tags, valid, 3, torch.Generator().manual_seed(5),
                                      stats, stats)
    generator, alone = torch.Generator().manual_seed(5), []
    probabilities = torch.softmax(logits, dim=1)
    for _ in range(3):
        draws = (torch.rand(tags.shape, generator=generator) < 0.5) & tags.bool()
        scores = classifier.class_scores(masked_image(pixels, attention_map(probabilities, draws)), valid)
        alone.append(attention_loss(scores, tags, draws))
    torch.testing.assert_close(together, sum(alone) / 3, rtol=1e-5, atol=1e-6)


# --- stages ------------------------------------------------------------------------------------------------

def _write_maps(folder, dataset, transform):
    folder.mkdir(parents=True, exist_ok=True)
    for record in dataset.records:
        mask = read_mask(record.mask_path, dataset.num_classes)
        transform((mask > 0).astype(np.float64)).save(folder / f"{record.id}.png")


def test_user_maps_of_any_depth_and_size_match_and_bad_ones_are_named(synthetic, tmp_path):
    dataset = open_dataset(synthetic, "train")
    eight = tmp_path / "eight"
    _write_maps(eight, dataset, lambda m: Image.fromarray((m * 255).astype(np.uint8)))
    sixteen = tmp_path / "sixteen"
    _write_maps(sixteen, dataset, lambda m: Image.fromarray((m * 65535).astype(np.uint16)))
    half = tmp_path / "half"  # half the size, same aspect ratio: resized to the image
    _write_maps(half, dataset, lambda m: Image.fromarray((m * 255).astype(np.uint8)).resize(
        (m.shape[1] // 2, m.shape[0] // 2), Image.NEAREST))
    first = dataset.records[0]
    assert read_saliency_map(sixteen / f"{first.id}.png").max() == 1.0
    made = {}
    for name in ("eight", "sixteen", "half"):
        manifest = make_saliency(dataset, tmp_path / name / "run", SaliencyConfig(source="folder",
                                                                                   folder=tmp_path / name))
        made[name] = [read_mask(tmp_path / name / "run" / "saliency" / f"{r.id}.png", 2) for r in dataset.records]
        assert manifest["config"]["threshold"] == 0.5
    for a, b in zip(made["eight"], made["sixteen"]):
        np.testing.assert_array_equal(a, b)
    truth = read_mask(first.mask_path, dataset.num_classes) > 0
    np.testing.assert_array_equal(made["eight"][0], truth)
    assert made["half"][0].shape == truth.shape and (made["half"][0] == truth).mean() > 0.9

    wrong = tmp_path / "wrong"  # another aspect ratio: the map of another image
    _write_maps(wrong, dataset, lambda m: Image.fromarray((m * 255).astype(np.uint8)).resize((20, 40)))
    with pytest.raises(DataError, match=f"{first.id}.png.*aspect ratio"):
        make_saliency(dataset, tmp_path / "wrong_run", SaliencyConfig(source="folder", folder=wrong))
    (eight / f"{dataset.records[1].id}.png").unlink()
    with pytest.raises(DataError, match=f"{dataset.records[1].id}.png: saliency map missing"):
        make_saliency(dataset, tmp_path / "missing_run", SaliencyConfig(source="folder", folder=eight))
    assert not (tmp_path / "missing_run" / "saliency").exists()  # refused before anything was written


def test_saliency_config_refusals():
    with pytest.raises(ValueError, match="needs folder"):
        SaliencyConfig(source="folder")
    with pytest.raises(ValueError, match="only read with source 'folder'"):
        SaliencyConfig(source="fine_grained", folder="maps")
    with pytest.raises(ValueError, match="tau2"):
        RefineSaliencyConfig(tau1=0.3, tau2=0.8)
    with pytest.raises(ValueError, match="source: ground_truth"):
        SegTrainConfig(objective="saliency", labels="ground_truth")
    assert SaliencyConfig().resolved_threshold() == "otsu"
    assert SaliencyConfig(source="ground_truth").resolved_threshold() is None


def test_stages_from_saliency_to_a_trained_segmenter(synthetic, tmp_path):
    dataset = open_dataset(synthetic, "train")
    run = tmp_path / "run"
    with pytest.raises(StageError, match="make_cam"):
        make_refined_saliency(dataset, run, RefineSaliencyConfig())
    oracle = make_saliency(dataset, run, SaliencyConfig(source="ground_truth"))
    assert oracle["oracle"] and oracle["metrics"]["per_class"]["foreground"]["iou"] == 1.0
    substitute = make_saliency(dataset, tmp_path / "substitute", SaliencyConfig())
    assert substitute["substitute"] and 0 < substitute["metrics"]["per_class"]["foreground"]["iou"] < 1

    train_cam(dataset, run, CamTrainConfig(**CAM))
    make_cams(dataset, run, MakeCamConfig(scales=(0.5, 1.0, 1.5), flip=False, reduce="max"))
    refined = make_refined_saliency(dataset, run, RefineSaliencyConfig())
    assert 0 <= refined["unlabelled"] < 1 and refined["metrics"]["per_class"]["foreground"]["iou"] is not None
    for record in dataset.records:  # eq. 2.6 only adds foreground or unlabels foreground
        refined_mask = read_mask(run / "refine_saliency" / f"{record.id}.png", 2)
        salient = read_mask(run / "saliency" / f"{record.id}.png", 2)
        changed = refined_mask != salient
        assert ((refined_mask[changed] == IGNORE_INDEX) & (salient[changed] == 1)
                | (refined_mask[changed] == 1) & (salient[changed] == 0)).all()

    config = SegTrainConfig(**SEG, labels="refine_saliency", objective="saliency", attention_paths=2,
                            loss_scales=(1.0, 0.5))
    manifest = train_seg(dataset, run, config)
    history = manifest["history"][-1]
    assert history["saliency"] > 0 and history["attention"] > 0
    assert history["loss"] == pytest.approx(history["saliency"] + 2.0 * history["attention"], rel=1e-4)
    assert "classifier_digest" in manifest["config"] and manifest["config"]["loss_scales"] == [1.0, 0.5]

    masks_only = train_seg(dataset, tmp_path / "plain", SegTrainConfig(**SEG, labels="ground_truth"))
    assert not {"objective", "attention_paths", "loss_scales", "classifier"} & set(masks_only["config"])
    with pytest.raises(StageError, match="train_cam"):
        train_seg(dataset, tmp_path / "plain2", SegTrainConfig(**SEG, labels="ground_truth", attention_paths=1))


def test_saliency_training_resumes_to_the_same_weights(synthetic, tmp_path, interrupted):
    dataset = open_dataset(synthetic, "train")
    runs = [tmp_path / "whole", tmp_path / "resumed"]
    for run in runs:
        train_cam(dataset, run, CamTrainConfig(**CAM))
        make_saliency(dataset, run, SaliencyConfig(source="ground_truth"))
    config = SegTrainConfig(**{**SEG, "epochs": 2}, labels="saliency", objective="saliency", attention_paths=1)
    train_seg(dataset, runs[0], config)
    interrupted(train_seg, dataset, runs[1], config)
    train_seg(dataset, runs[1], config)
    whole, resumed = (torch.load(r / "train_seg" / "model.pt", weights_only=False)["state_dict"] for r in runs)
    for key in whole:
        torch.testing.assert_close(whole[key], resumed[key], rtol=0, atol=0)


def test_masking_saliency_recipe_is_valid():
    recipe, configs = load_recipe("recipes/masking_saliency.yaml", ["dataset=d", "run=r"])
    assert list(configs)[:4] == ["train_cam", "make_cam", "saliency", "refine_saliency"]
    assert configs["make_cam"].reduce == "max" and configs["train_seg"].objective == "saliency"
    assert configs["train_seg"].attention_paths == 2 and configs["train_cam"].head == "dilated"
    assert recipe.image_size == "auto"  # sizes follow the data


def test_a_score_map_with_a_background_channel_is_refused_by_name(tmp_path):
    from tagseg.artifacts import load_foreground_scores, save_score_map

    path = tmp_path / "x.npz"
    save_score_map(path, np.zeros((2, 3, 4), np.float32), [0, 1])
    with pytest.raises(StageError, match=r"x.npz: refine_saliency needs foreground-only score maps"):
        load_foreground_scores(path, "refine_saliency")
    save_score_map(path, np.zeros((1, 3, 4), np.float32), [1])
    assert load_foreground_scores(path, "refine_saliency")[1].tolist() == [1]
