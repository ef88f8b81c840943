"""Label-free background thresholds: hand-computed pieces and a synthetic case with a known best threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagseg.label_free import GRID, choose, masking_criterion, masking_logits, otsu, best_score_histogram, \
    threshold_labels


def test_threshold_labels_index_background_then_classes():
    scores = np.array([[[0.9, 0.2, 0.5]], [[0.1, 0.3, 0.6]]], np.float32)  # two classes, 1 x 3 pixels
    labels = threshold_labels(scores, [0.0, 0.25, 0.55])
    np.testing.assert_array_equal(labels[:, 0], [[1, 2, 2], [1, 2, 2], [1, 0, 2]])
    assert threshold_labels(np.zeros((0, 2, 2), np.float32), [0.1, 0.2]).shape == (2, 2, 2)


def test_masking_criterion_by_hand():
    full, blank = np.array([2.0]), np.array([-2.0])
    erased, kept, area = np.array([[-2.0], [0.0]]), np.array([[2.0], [0.0]]), np.array([[0.25], [0.5]])
    # t0: 2 - (-2) - (0.5 - 1) * 4 = 6; t1: 0 - 0 - 0 * 4 = 0
    np.testing.assert_allclose(masking_criterion(full, blank, erased, kept, area, space="logit"), [6.0, 0.0])
    # as probabilities (the default), with ln 3 -> 0.75 and -ln 3 -> 0.25: 0.75 - 0.25 - (0.5 - 1) * 0.5 = 0.75
    l3 = np.log(3.0)
    np.testing.assert_allclose(masking_criterion(np.array([l3]), np.array([-l3]), np.array([[-l3]]),
                                                 np.array([[l3]]), np.array([[0.25]])), [0.75])
    # the empty and the whole-image mask score zero whatever the classifier says
    ends = masking_criterion(full, blank, np.array([[2.0], [-2.0]]), np.array([[-2.0], [2.0]]),
                             np.array([[0.0], [1.0]]))
    np.testing.assert_allclose(ends, [0.0, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="space"):
        masking_criterion(full, blank, erased, kept, area, space="odds")


def test_choose_takes_the_largest_total_and_the_lowest_threshold_on_ties():
    assert choose([0.1, 0.2, 0.3], np.array([1.0, 3.0, 3.0])) == 0.2


def square_case(size: int = 32):
    """An image whose object (a bright square) is exactly the pixels scoring above 0.5, inside a halo
    of scores 0.3-0.5 and a background below 0.2; the classifier's logit grows with how much of the
    square is visible (from -2 to 2: a classifier that a part of the object does not already convince,
    or the probability form keeps the smallest part that does), so the best threshold is known: 0.5."""
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.0, 0.2, (1, size, size)).astype(np.float32)
    scores[0, 6:26, 6:26] = rng.uniform(0.3, 0.5, (20, 20))
    scores[0, 10:22, 10:22] = rng.uniform(0.52, 1.0, (12, 12))
    image = torch.full((3, size, size), -1.0)
    image[:, 10:22, 10:22] = 1.0
    area = 144 / size ** 2

    def classify(batch: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 2) logits, class 1 is ours
        visible = (batch[:, 0] > 0.5).float().mean(dim=(1, 2)) / area
        return torch.stack([torch.zeros_like(visible), 4 * visible - 2], dim=1)

    return scores, image, classify


def test_masking_picks_the_known_best_threshold_where_otsu_does_not():
    scores, image, classify = square_case()
    labels = threshold_labels(scores, GRID)
    logits = masking_logits(classify, image, labels, [1], batch_size=8)
    assert logits["erased"].shape == logits["kept"].shape == logits["area"].shape == (len(GRID), 1)
    np.testing.assert_allclose(logits["full"], [2.0])
    np.testing.assert_allclose(logits["blank"], [-2.0])
    at = GRID.index(0.5)
    assert logits["area"][at, 0] == pytest.approx(144 / 32 ** 2)
    assert logits["erased"][at, 0] == pytest.approx(-2.0) and logits["kept"][at, 0] == pytest.approx(2.0)
    assert choose(GRID, masking_criterion(**logits)) == 0.5
    assert choose(GRID, masking_criterion(**logits, space="logit")) == 0.5
    assert abs(otsu(best_score_histogram(scores)) - 0.5) > 0.05


def test_masking_logits_ask_about_each_class_with_its_own_mask():
    scores = np.zeros((2, 4, 4), np.float32)
    scores[0, :, :2] = 0.9  # class A on the left, class B on the right
    scores[1, :, 2:] = 0.8
    image = torch.ones(3, 4, 4)

    def classify(batch):  # class 3: left half visible, class 5: right half visible, 6 outputs
        left, right = batch[:, 0, :, :2].mean(dim=(1, 2)), batch[:, 0, :, 2:].mean(dim=(1, 2))
        out = torch.zeros(len(batch), 6)
        out[:, 3], out[:, 5] = left, right
        return out

    logits = masking_logits(classify, image, threshold_labels(scores, [0.5]), [3, 5], batch_size=3)
    np.testing.assert_allclose(logits["full"], [1, 1])
    np.testing.assert_allclose(logits["erased"], [[0, 0]])  # each class's own half erased
    np.testing.assert_allclose(logits["kept"], [[1, 1]])
    np.testing.assert_allclose(logits["area"], [[0.5, 0.5]])


def test_classes_the_classifier_does_not_see_count_zero():
    # full <= blank: the image holds no more evidence of the class than a blank one
    criterion = masking_criterion(np.array([2.0, -1.0]), np.array([-2.0, 0.5]), np.array([[-2.0, 3.0]]),
                                  np.array([[2.0, -3.0]]), np.array([[0.25, 0.5]]), space="logit")
    np.testing.assert_allclose(criterion, [6.0])


def stage_case(make_voc, tmp_path):
    """A dataset whose objects are all the rectangle [4:16, 6:20] of 24 x 32 images, score maps that put
    it above 0.5 inside a halo of 0.3-0.45, and a classifier that sees the class in proportion to how
    much of the rectangle is left: the masking threshold must be 0.45 (the halo's top)."""
    from types import SimpleNamespace

    from tagseg.artifacts import save_score_map
    from tagseg.data.dataset import open_dataset

    dataset = open_dataset(make_voc(), "train")
    folder = tmp_path / "scores"
    rng = np.random.default_rng(1)
    for record in dataset.records:
        scores = rng.uniform(0.0, 0.1, (1, 24, 32)).astype(np.float32)
        scores[0, 2:18, 4:22] = rng.uniform(0.3, 0.45, (16, 18))
        scores[0, 4:16, 6:20] = rng.uniform(0.5, 1.0, (12, 14))
        save_score_map(folder / f"{record.id}.npz", scores, record.labels)
    inside = torch.zeros(24, 32, dtype=torch.bool)
    inside[4:16, 6:20] = True

    def class_scores(batch):
        left = (batch[:, 0] != 0)[:, inside].float().mean(dim=1)
        return (4 * left - 2)[:, None].repeat(1, 2)

    net = SimpleNamespace(backbone=SimpleNamespace(mean=(0.25, 0.25, 0.25), std=(1.0, 1.0, 1.0)),
                          class_scores=class_scores)
    return dataset, folder, net


def test_stage_threshold_by_masking_and_its_fallbacks(make_voc, tmp_path):
    from types import SimpleNamespace

    from tagseg.label_free import stage_threshold

    dataset, folder, net = stage_case(make_voc, tmp_path)
    chosen = stage_threshold(folder, dataset, "masking", net)
    assert chosen["method"] == "masking" and chosen["threshold"] == 0.45
    assert chosen["classes_seen"] == chosen["classes_asked"] == len(dataset)
    otsu_only = stage_threshold(folder, dataset, "otsu")
    assert otsu_only["method"] == "otsu" and otsu_only["threshold"] != 0.45
    no_net = stage_threshold(folder, dataset, "masking", None)
    assert no_net["method"] == "otsu" and "train_cam/model.pt" in no_net["note"]
    batches = []
    blind = SimpleNamespace(backbone=net.backbone,
                            class_scores=lambda batch: batches.append(len(batch)) or torch.zeros(len(batch), 2))
    fallback = stage_threshold(folder, dataset, "masking", blind)
    assert fallback["method"] == "otsu" and fallback["threshold"] == otsu_only["threshold"]
    assert fallback["masking"]["classes_seen"] == 0 and "too few" in fallback["note"]
    assert batches == [2] * len(dataset)  # full and blank per image: the masks were never scored
    given = {"method": "from_source", "threshold": 0.3}  # a stage's own fallback (the walk's) replaces Otsu's
    walked = stage_threshold(folder, dataset, "masking", blind, fallback=lambda: given)
    assert walked["method"] == "from_source" and walked["threshold"] == 0.3 and "too few" in walked["note"]
    assert walked["masking"]["classes_seen"] == 0 and given == {"method": "from_source", "threshold": 0.3}
    assert stage_threshold(folder, dataset, "masking", None, fallback=lambda: given)["threshold"] == 0.3
    # a classifier that sees the class in the background, against the object and its halo: every mask
    # (the object, the halo, some background) loses to a random one of its area
    weights = torch.ones(24, 32)
    weights[2:18, 4:22] = -1.0

    def background_evidence(batch):
        return (4 * ((batch[:, 0] != 0) * weights).mean(dim=(1, 2)))[:, None].repeat(1, 2)

    wrong = stage_threshold(folder, dataset, "masking", SimpleNamespace(backbone=net.backbone,
                                                                         class_scores=background_evidence))
    assert wrong["method"] == "otsu" and "no mask beat" in wrong["note"]
    assert wrong["masking"]["classes_seen"] == len(dataset)


def test_masking_fallback_at_its_edges():
    from tagseg.label_free import masking_fallback

    beats = np.array([-0.1, 0.0, 0.2])
    assert masking_fallback(5, 10, beats) is None  # exactly MIN_SEEN of the pairs is enough
    assert "too few" in masking_fallback(4, 10, beats)
    assert "no mask beat" in masking_fallback(10, 10, np.array([-0.1, 0.0]))


def test_masking_reads_each_sampled_photo_once(make_voc, tmp_path, monkeypatch):
    import tagseg.label_free as label_free

    dataset, folder, net = stage_case(make_voc, tmp_path)
    reads = []
    read_image = label_free.read_image
    monkeypatch.setattr(label_free, "read_image", lambda path: reads.append(path) or read_image(path))
    label_free.masking_of(folder, dataset, net)
    assert len(reads) == len(set(reads)) == len(dataset)  # two passes (classes seen, masks), one read each


def test_masking_judges_images_at_the_normalised_size(make_voc, tmp_path):
    """On a dataset of image_size 2 x 320 px the classifier must see images (and masks) at half size, the
    pixel sizes it was trained and run at: what it is shown equals the halved image and halved scores."""
    from types import SimpleNamespace

    from tagseg.data.transforms import normalize, resize
    from tagseg.label_free import GRID, image_masking_logits, masking_logits, stage_threshold, threshold_labels

    dataset, folder, net = stage_case(make_voc, tmp_path)
    shapes = []

    def class_scores(batch):
        shapes.append(tuple(batch.shape[-2:]))
        return batch.mean((1, 2, 3))[:, None].repeat(1, 2)

    seeing = SimpleNamespace(backbone=net.backbone, class_scores=class_scores)
    stage_threshold(folder, dataset, "masking", seeing, scale=0.5)
    assert shapes and set(shapes) == {(12, 16)}  # the 24 x 32 images, halved
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    scores = rng.uniform(0, 1, (2, 24, 32)).astype(np.float32)
    got = image_masking_logits(image, scores, [0, 1], seeing, 0.5)
    small = np.stack([resize(s, 12, 16) for s in scores])
    x = torch.from_numpy(normalize(resize(image, 12, 16), net.backbone.mean, net.backbone.std))
    expected = masking_logits(seeing.class_scores, x, threshold_labels(small, GRID), [0, 1])
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key])
    same = image_masking_logits(image, scores, [0, 1], seeing, 1.0)
    x = torch.from_numpy(normalize(image, net.backbone.mean, net.backbone.std))
    np.testing.assert_allclose(same["erased"], masking_logits(seeing.class_scores, x, threshold_labels(scores, GRID),
                                                              [0, 1])["erased"])


def test_masking_keeps_its_sample_at_the_classifier_size(make_voc, tmp_path, monkeypatch):
    """The sampled photos and score maps are held (both passes) at the classifier's size, not the photo's:
    32 photos of 4000 px would otherwise hold gigabytes."""
    from types import SimpleNamespace

    import tagseg.label_free as label_free

    dataset, folder, net = stage_case(make_voc, tmp_path)
    held = []
    track = label_free.track
    monkeypatch.setattr(label_free, "track", lambda items, total, what: held.append(list(items)) or track(held[-1],
                                                                                                       total, what))
    brightness = SimpleNamespace(backbone=net.backbone, class_scores=lambda b: b.mean((1, 2, 3))[:, None].repeat(1, 2))
    label_free.masking_of(folder, dataset, brightness, scale=0.5)
    assert held and {image.shape for image, _, _ in held[0]} == {(12, 16, 3)}  # the 24 x 32 photos, halved
    assert {scores.shape[1:] for _, scores, _ in held[0]} == {(12, 16)}


def test_expected_miou_by_hand():
    from tagseg.label_free import FINE_GRID, class_histograms, expected_miou

    # four pixels of class 2 scoring 0.9, 0.6, 0.2, 0.1 (bin centres, so the histogram is exact)
    scores = np.array([[[0.9025, 0.2025], [0.6025, 0.1025]]], np.float32)
    counts, sums = class_histograms(scores, [2], 3)
    np.testing.assert_array_equal(counts.sum(axis=1), [0, 0, 4])
    assert sums.sum() == pytest.approx(1.81)
    values = expected_miou(counts, sums, [0.3, 0.7])
    # t 0.3: class 2 has 1.505 / (2 + 0.305), background 1.695 / (2 + 0.495)
    # t 0.7: class 2 has 0.9025 / (1 + 0.9075), background 2.0925 / (3 + 0.0975)
    np.testing.assert_allclose(values, [(1.505 / 2.305 + 1.695 / 2.495) / 2,
                                        (0.9025 / 1.9075 + 2.0925 / 3.0975) / 2], rtol=1e-5)
    # every threshold between 0.2 and 0.6 splits the same way; the lowest of them is chosen
    assert choose(FINE_GRID, expected_miou(counts, sums)) == 0.21


def test_expected_iou_finds_the_split_of_a_synthetic_case(make_voc, tmp_path):
    from tagseg.label_free import stage_threshold

    dataset, folder, _ = stage_case(make_voc, tmp_path)
    chosen = stage_threshold(folder, dataset, "expected_iou")
    assert chosen["method"] == "expected_iou" and 0.3 <= chosen["threshold"] <= 0.5


def test_matched_area_keeps_the_share_of_foreground_pixels():
    from tagseg.label_free import matched_area

    source = best_score_histogram(np.array([[[0.1025, 0.2025, 0.3025, 0.6025]]], np.float32))  # 1 of 4 above 0.5
    walked = best_score_histogram(np.array([[[0.1025, 0.3025, 0.7025, 0.9025]]], np.float32))
    assert matched_area(source, 0.5, walked) == 0.71  # the lowest threshold leaving 1 of 4 above it
    assert matched_area(source, 0.05, walked) == 0.01  # everything above: the lowest threshold


def test_score_floor_is_where_the_lowest_share_of_pixels_ends():
    from tagseg.label_free import score_floor

    cam = best_score_histogram(np.array([[[0.0, 0.0, 0.4, 0.9]]], np.float32))  # background at 0
    assert score_floor(cam) == 0.0
    lifted = np.full((1, 10, 100), 0.7025, np.float32)  # 1000 pixels from 0.7025 up ...
    lifted[0, 0, :50] = 0.95
    lifted[0, 1, :5] = 0.1025  # ... and 5 stray pixels (0.5%) far below
    assert score_floor(best_score_histogram(lifted)) == pytest.approx(0.7)
    assert score_floor(best_score_histogram(lifted), share=0.004) == pytest.approx(0.1)
