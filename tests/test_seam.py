"""SEAM: its normalisations, the PCM, L_ER and L_ECR by hand, and the head end to end."""

import pytest
import torch

from tagseg import losses
from tagseg.models.backbones import create_backbone
from tagseg.models.cam import build_cam_net, global_average
from tagseg.models.seam import (EPS, equivariant_cross_regularisation, equivariant_regularisation, keep_top_class,
                                max_norm, pcm_affinity, pcm_revise, with_background)


@pytest.fixture(scope="module")
def seam():
    torch.manual_seed(0)
    return build_cam_net("seam", create_backbone("efficientnet_lite0", weights=None), num_classes=3)


def test_max_norm_stretches_each_map_by_its_own_range():
    maps = torch.tensor([[[[-1.0, 1.0], [3.0, 5.0]], [[2.0, 2.0], [2.0, 2.0]]]])
    out = max_norm(maps)
    # map 0: ReLU -> [0, 1, 3, 5], min 0, max 5; map 1: constant 2 -> all zero
    expected = torch.tensor([[[0.0, 1.0], [3.0, 5.0]]]).sub(EPS).clamp_min(0) / (5 + EPS)
    torch.testing.assert_close(out[0, :1], expected)
    assert torch.equal(out[0, 1], torch.zeros(2, 2))


def test_background_and_top_class():
    foreground = torch.tensor([[[[0.2, 0.9]], [[0.5, 0.1]]]])  # 2 classes, 1 x 2 pixels
    full = with_background(foreground)
    torch.testing.assert_close(full[0, 0], torch.tensor([[0.5, 0.1]]))
    top = keep_top_class(full)
    torch.testing.assert_close(top[0], torch.tensor([[[0.5, 0.1]], [[0.0, 0.9]], [[0.5, 0.0]]]))


def test_pcm_affinity_columns_sum_to_one_and_revise_by_hand():
    torch.manual_seed(0)
    embedding = torch.rand(2, 5, 3, 4)  # positive: every cosine > 0
    affinity = pcm_affinity(embedding)
    assert affinity.shape == (2, 12, 12)
    torch.testing.assert_close(affinity.sum(dim=1), torch.ones(2, 12), atol=1e-4, rtol=0)
    # two positions, orthogonal embeddings: each column keeps its own position only
    orthogonal = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    maps = torch.tensor([[[[0.3, 0.8]]]])
    torch.testing.assert_close(pcm_revise(maps, pcm_affinity(orthogonal)), maps, atol=1e-4, rtol=0)
    # identical embeddings: both positions get the mean
    same = torch.ones(1, 2, 1, 2)
    torch.testing.assert_close(pcm_revise(maps, pcm_affinity(same)), torch.full((1, 1, 1, 2), 0.55), atol=1e-4, rtol=0)


def test_equivariance_losses_by_hand():
    a = torch.tensor([[[[0.0, 1.0]], [[0.5, 0.5]]]])
    b = torch.tensor([[[[1.0, 1.0]], [[0.5, 0.0]]]])
    assert equivariant_regularisation(a, b).item() == pytest.approx((1 + 0 + 0 + 0.5) / 4)
    cams = with_background(torch.tensor([[[[0.6, 0.2]], [[0.4, 0.9]]]]))  # bg [0.4, 0.1]
    revised = torch.zeros(1, 3, 1, 2)
    # targets after keeping the top class: bg [0.4, 0.1], class 1 [0.6, 0], class 2 [0, 0.9]
    # |differences| = [0.4, 0.1, 0.6, 0, 0, 0.9]: the top 50% (3 values) are 0.9, 0.6, 0.4
    ecr = equivariant_cross_regularisation(cams, revised, top_fraction=0.5)
    assert ecr.item() == pytest.approx((0.9 + 0.6 + 0.4) / 3)
    assert equivariant_cross_regularisation(cams, revised, 1.0).item() == pytest.approx(2.0 / 6)


def test_seam_head_trains_and_infers_from_the_pcm(seam):
    images = torch.randn(2, 3, 64, 96)
    targets = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    parts = seam.loss(images, targets, 0, 10)
    assert parts["loss"].item() == pytest.approx((parts["cls"] + parts["er"] + parts["ecr"]).item(), rel=1e-5)
    assert parts["er"] > 0 and parts["ecr"] > 0
    parts["loss"].backward()
    assert all(p.grad is not None for m in seam.new_modules() for p in m.parameters())
    cams = seam.cams(images)
    assert cams.shape == (2, 3, 4, 6) and (cams >= 0).all()
    # image-level scores come from the raw CAMs, as in training (the PCM is inference's refinement)
    raw = seam.classify(seam.backbone(images))
    torch.testing.assert_close(seam.class_scores(images), global_average(raw))
    assert parts["cls"].item() != pytest.approx(losses.multilabel_soft_margin(global_average(cams), targets).item())


def test_seam_rescale_must_be_a_reduction():
    with pytest.raises(ValueError, match="rescale"):
        build_cam_net("seam", create_backbone("efficientnet_lite0", weights=None), 3, seam_scale=1.5)
