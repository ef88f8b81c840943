import math

import numpy as np
import pytest
import torch

from tagseg import losses
from tagseg.models.backbones import create_backbone
from tagseg.models.cam import HEADS, build_cam_net, cell_weights, global_average, merge_2x2, tile_2x2
from tagseg.stages.make_cam import multiscale_cams, normalized_tagged


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return create_backbone("efficientnet_lite0", weights=None)


def test_multilabel_soft_margin_by_hand():
    logits = torch.tensor([[0.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0]])
    expected = (math.log(2) + math.log(1 + math.exp(2))) / 2  # -log sigma(0), -log(1 - sigma(2))
    assert losses.multilabel_soft_margin(logits, targets).item() == pytest.approx(expected)


def test_puzzle_reconstruction_and_alpha_ramp():
    full = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    merged = torch.tensor([[[[1.0, 0.0], [3.0, 8.0]]]])
    assert losses.puzzle_reconstruction(full, merged).item() == pytest.approx((0 + 2 + 0 + 4) / 4)
    assert [losses.puzzle_alpha(s, 100, 4.0) for s in (0, 25, 50, 99)] == [0.0, 2.0, 4.0, 4.0]


def test_puzzle_reconstruction_on_tagged_classes_only():
    full = torch.tensor([[[[2.0, -3.0]], [[5.0, 5.0]]]])     # B=1, K=2, 1x2
    merged = torch.tensor([[[[1.0, -1.0]], [[0.0, 0.0]]]])
    targets = torch.tensor([[1.0, 0.0]])                    # class 1 absent: ignored
    # class 0 after ReLU: |2-1| + |0-0| = 1, averaged over all B*K*H*W = 4 entries
    assert losses.puzzle_reconstruction(full, merged, targets).item() == pytest.approx(1 / 4)
    assert losses.puzzle_reconstruction(full, merged).item() == pytest.approx((1 + 2 + 5 + 5) / 4)
    # class 0 raw logits (the reference code's masking): |2-1| + |-3-(-1)| = 3
    assert losses.puzzle_reconstruction(full, merged, targets, rectified=False).item() == pytest.approx(3 / 4)


def test_attention_pooling_by_hand():
    cams = torch.tensor([[[[0.0, math.log(3.0)]]]])  # weights softmax([0, ln 3]) = [1/4, 3/4] at k = 1
    assert losses.attention_pooling(cams, 1.0).item() == pytest.approx(0.75 * math.log(3.0))
    assert losses.attention_pooling(cams, 0.0).item() == pytest.approx(math.log(3.0) / 2)  # k=0: average


def test_pooling_over_the_real_image_only_by_hand():
    cams = torch.tensor([[[[1.0, 5.0], [3.0, 7.0]]]])             # B=1, K=1, 2x2 cells
    valid = torch.zeros(1, 4, 4, dtype=torch.bool)                 # 4x4 input, 2x2 pixels per cell
    valid[:, :, :3] = True                                         # right column of cells is half padding
    torch.testing.assert_close(cell_weights(valid, (2, 2)), torch.tensor([[[[1.0, 0.5], [1.0, 0.5]]]]))
    assert global_average(cams).item() == pytest.approx(4.0)
    assert global_average(cams, valid).item() == pytest.approx((1 + 3 + 0.5 * (5 + 7)) / 3)
    weights = cell_weights(valid, (2, 2))
    # k = 0: the same weighted mean; a cell of pure padding (weight 0) takes no part
    assert losses.attention_pooling(cams, 0.0, weights).item() == pytest.approx((1 + 3 + 0.5 * (5 + 7)) / 3)
    valid[:, :, 2:] = False
    assert losses.attention_pooling(cams, 1.0, cell_weights(valid, (2, 2))).item() == pytest.approx(
        (1 * math.e + 3 * math.e ** 3) / (math.e + math.e ** 3))


def test_dense_cam_and_dilated_cam_loss_by_hand():
    standard = torch.tensor([[[[1.0, -1.0]], [[0.0, 2.0]]]])  # B=1, K=2, 1x2
    dilated = [torch.tensor([[[[3.0, 1.0]], [[0.0, 0.0]]]]), torch.tensor([[[[1.0, 1.0]], [[2.0, 0.0]]]])]
    dense = losses.dense_cam(standard, dilated)
    torch.testing.assert_close(dense, torch.tensor([[[[2.0, 1.0]], [[1.0, 2.0]]]]))
    targets = torch.tensor([[1.0, 0.0]])  # only class 0 present
    # relu(dense) - relu(standard) for class 0: (2-1, 1-0) -> squares 1 + 1 = 2; / (C=2 * |S|=2)
    assert losses.dilated_cam_loss(standard, dense, targets).item() == pytest.approx(2 / 4)


def test_puzzle_tile_merge_round_trip_is_exact():
    images = torch.randn(3, 5, 8, 12)
    tiles = tile_2x2(images)
    assert tiles.shape == (12, 5, 4, 6)
    torch.testing.assert_close(tiles[0], images[0, :, :4, :6], rtol=0, atol=0)   # top-left of image 0
    torch.testing.assert_close(tiles[3 + 1], images[1, :, :4, 6:], rtol=0, atol=0)  # top-right of image 1
    assert torch.equal(merge_2x2(tiles), images)
    with pytest.raises(ValueError, match="even sizes"):
        tile_2x2(torch.zeros(1, 1, 5, 4))


@pytest.mark.parametrize("head", HEADS)
def test_head_shapes_and_losses(backbone, head):
    net = build_cam_net(head, backbone, num_classes=4, dilations=(2, 4))
    images = torch.randn(2, 3, 64, 96)
    targets = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])
    assert net.cams(images).shape == (2, 4, 4, 6)
    assert net.class_scores(images).shape == (2, 4)
    parts = net.loss(images, targets, step=3, total_steps=10)
    assert parts["loss"].ndim == 0 and torch.isfinite(parts["loss"])
    parts["loss"].backward()
    assert all(p.grad is not None for m in net.new_modules() for p in m.parameters())
    valid = torch.ones(2, 64, 96, dtype=torch.bool)
    torch.testing.assert_close(net.class_scores(images, valid), net.class_scores(images))  # no padding: same scores
    valid[:, :, 48:] = False
    masked = net.loss(images, targets, step=3, total_steps=10, valid=valid)["loss"]
    assert torch.isfinite(masked) and masked.item() != pytest.approx(parts["loss"].item())


def test_multiscale_cams_batched_equals_one_by_one(backbone):
    net = build_cam_net("cam", backbone, num_classes=3).eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(3)]
    together = multiscale_cams(net, images, (0.5, 1.0), True, "cpu")
    alone = torch.cat([multiscale_cams(net, [i], (0.5, 1.0), True, "cpu") for i in images])
    assert together.shape == (3, 3, 40, 56)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)
    kept = normalized_tagged(together[0], (1, 3))
    assert kept.shape == (2, 40, 56) and np.allclose(kept.reshape(2, -1).max(1), 1.0)
