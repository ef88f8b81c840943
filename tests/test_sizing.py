"""Size normalisation: one recipe, the same pixel sizes at the network on 320 px and 640 px data."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tagseg.artifacts import load_score_map
from tagseg.data.dataset import open_dataset
from tagseg.data.make_synthetic import write_synthetic_dataset
from tagseg.pipeline import load_recipe
from tagseg.sizing import (REFERENCE_SIZE, image_pixels, input_scales, median_long_side, odd_window,
                           resolve_image_size)
from tagseg.stages.make_cam import MakeCamConfig, make_cams
from tagseg.stages.train_cam import CamTrainConfig, train_cam

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_median_long_side_reads_headers_and_passes_over_unreadable_files(tmp_path):
    paths = []
    for k, (width, height) in enumerate([(640, 480), (480, 640), (500, 375), (320, 213), (640, 427)]):
        paths.append(tmp_path / f"{k}.png")
        Image.new("RGB", (width, height)).save(paths[-1])
    assert median_long_side(paths) == 640
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert median_long_side(paths[2:] + [tmp_path / "bad.jpg"]) == 500
    assert median_long_side([]) == REFERENCE_SIZE


@pytest.mark.parametrize("size, cam_scales, segment_scales, walk, bilateral, gaussian", [
    (320, (1.5, 2.0), (0.75, 1.0, 1.25), 1.0, 32.0, 3.0),
    (640, (0.75, 1.0), (0.375, 0.5, 0.625), 0.5, 64.0, 6.0),
])
def test_silop_recipe_maps_to_the_documented_sizes(size, cam_scales, segment_scales, walk, bilateral, gaussian):
    """The "Image sizes" table of docs/concepts.md: CAMs at long sides of 480 and 640 px, DeepLab at 240-400 px, the walk at
    320 px, and the CRF's kernels widening with the photos."""
    _, configs = load_recipe(RECIPES / "silop.yaml")
    assert input_scales(configs["make_cam"].scales, size) == cam_scales
    assert [s * size for s in cam_scales] == [480, 640]
    assert input_scales(configs["segment"].scales, size) == segment_scales
    assert input_scales([1.0], size) == (walk,)
    crf = configs["pseudo_labels"].crf_settings.params(size)
    assert (crf.bilateral_sxy, crf.gaussian_sxy) == (bilateral, gaussian)
    assert configs["affinity_labels"].crf_settings.params(size).bilateral_sxy == bilateral
    assert image_pixels(50, 500) == 78.125


def test_odd_window_is_the_nearest_odd_pixel_count():
    """BES's window: 8.3 px of a 320 px photo is its 13 px on 500 px photos."""
    assert [odd_window(8.3, size) for size in (320, 500, 640)] == [9, 13, 17]
    assert odd_window(8.3, 64) == 3  # never below 3
    assert odd_window(12.0, 320) == 13 and odd_window(11.9, 320) == 11  # a tie (12 px) goes up


def test_explicit_image_size_wins_over_the_median(tmp_path):
    root = tmp_path / "data"
    write_synthetic_dataset(root, 4, seed=0, size=(64, 48), val_fraction=0.25)
    dataset = open_dataset(root, "train")
    assert resolve_image_size("auto", dataset) == 64
    assert resolve_image_size(500, dataset) == 500


def test_make_cam_gives_the_same_cams_on_a_dataset_and_its_2x_copy(tmp_path):
    small = tmp_path / "small"
    write_synthetic_dataset(small, 8, seed=3, size=(64, 48), val_fraction=0.25)
    large = tmp_path / "large"
    shutil.copytree(small, large)
    for path in (large / "JPEGImages").iterdir():  # photos twice the size, same content
        image = np.asarray(Image.open(path).convert("RGB"))
        Image.fromarray(cv2.resize(image, (128, 96), interpolation=cv2.INTER_CUBIC)).save(path, quality=95)
    for path in (large / "SegmentationClass").iterdir():
        mask = Image.open(path)
        mask.resize((128, 96), Image.NEAREST).save(path)

    train = open_dataset(small, "train")
    config = CamTrainConfig(epochs=1, min_steps=0, batch_size=4, crop_size=64, lr=0.001, weights=None)
    train_cam(train, tmp_path / "run_small", config)
    run_large = tmp_path / "run_large"
    shutil.copytree(tmp_path / "run_small" / "train_cam", run_large / "train_cam")

    cams = MakeCamConfig(scales=(0.2,), flip=False)  # long side 64 px at the network for both datasets
    small_manifest = make_cams(train, tmp_path / "run_small", cams)
    large_manifest = make_cams(open_dataset(large, "train"), run_large, cams)
    assert small_manifest["config"]["image_size"] == 64 and large_manifest["config"]["image_size"] == 128
    for item_id in train.ids:
        a, classes = load_score_map(tmp_path / "run_small" / "make_cam" / f"{item_id}.npz")
        b, _ = load_score_map(run_large / "make_cam" / f"{item_id}.npz")
        assert b.shape[1:] == (96, 128)
        b = np.stack([cv2.resize(c.astype(np.float32), (64, 48), interpolation=cv2.INTER_AREA) for c in b])
        assert np.abs(a - b).mean() < 0.05, item_id
