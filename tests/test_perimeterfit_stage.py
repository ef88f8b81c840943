"""perimeter / perimeterfit stages on tiny synthetic data with hand-made CAMs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tagseg.artifacts import load_score_map, save_score_map
from tagseg.config import load_config
from tagseg.data.dataset import open_dataset
from tagseg.data.imageio import read_mask
from tagseg.data.make_synthetic import write_synthetic_dataset
from tagseg.errors import ConfigError, StageError
from tagseg.rundir import stage_dir
from tagseg.stages.perimeter import PerimeterConfig, perimeter_maps, read_perimeter
from tagseg.stages.perimeterfit import PerimeterFitConfig, perimeterfit

FAST_USS = dict(clusters=8, iterations=8, min_clusters=3, slic_segments=150, max_side=64)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_dataset(root, 8, seed=2, size=(80, 60), val_fraction=0.25)
    return root


def fake_cams(dataset, run):
    """Blurred, dilated ground truth: over-activated CAMs as a real classifier makes them."""
    with stage_dir(run, "make_cam", {"fake": True}) as stage:
        for record in dataset.records:
            mask = read_mask(record.mask_path, dataset.num_classes)
            planes = []
            for label in record.labels:
                grown = cv2.dilate((mask == label).astype(np.uint8), np.ones((9, 9), np.uint8))
                blurred = cv2.GaussianBlur(grown.astype(np.float32), (0, 0), 3)
                planes.append(blurred / max(blurred.max(), 1e-5))
            save_score_map(stage.item_path(record.id, ".npz"), np.stack(planes), record.labels)


def config(**extra) -> PerimeterFitConfig:
    return PerimeterFitConfig(perimeter=PerimeterConfig(**FAST_USS), grid=(0.1, 0.3, 0.5), **extra)


def test_perimeterfit_stage_refines_and_resumes(synthetic, tmp_path):
    dataset = open_dataset(synthetic, "train")
    fake_cams(dataset, tmp_path)
    manifest = perimeterfit(dataset, tmp_path, config())
    assert manifest["threshold_choice"] == "grid" and len(manifest["grid"]) == 9
    assert manifest["thresholds"] == manifest["grid"][0]["thresholds"]
    # the stage's own evaluation finds the grid search's best row again
    assert manifest["metrics"]["miou"] == pytest.approx(manifest["grid"][0]["miou"], abs=1e-9)
    for record in dataset.records:
        cam, cam_classes = load_score_map(tmp_path / "make_cam" / f"{record.id}.npz")
        refined, classes = load_score_map(tmp_path / "perimeterfit" / f"{record.id}.npz")
        np.testing.assert_array_equal(classes, cam_classes)
        assert refined.shape == cam.shape and np.all(refined <= cam + 1e-3)
        for variant in ("slic", "quickshift"):
            assert read_perimeter(tmp_path / f"perimeter_{variant}" / f"{record.id}.png").shape == cam.shape[1:]

    outputs = sorted((tmp_path / "perimeterfit").glob("*.npz"))
    (outputs[0]).unlink()
    stamps = {p: p.stat().st_mtime_ns for p in outputs[1:]}
    again = perimeterfit(dataset, tmp_path, config())
    assert again["timings"]["items_computed"] == len(dataset) + 1
    assert outputs[0].exists() and all(p.stat().st_mtime_ns == t for p, t in stamps.items())

    with pytest.raises(StageError, match="different"):
        perimeterfit(dataset, tmp_path, config(combination="product"))


def test_label_free_and_fixed_thresholds(synthetic, tmp_path):
    dataset = open_dataset(synthetic, "train")
    fake_cams(dataset, tmp_path)
    manifest = perimeterfit(dataset, tmp_path, config(search="label_free"))
    assert manifest["threshold_choice"] == "label_free"
    free = manifest["label_free"]  # the CAMs' label-free threshold, halved as the combination halves scores
    assert free["method"] == "from_cams" and free["threshold"] == round(free["cams_threshold"] / 2, 3)
    # no classifier in this run (hand-made CAMs): the masking threshold falls back to Otsu's, and says so;
    # another label-free method only rescores the stage's maps
    masked = perimeterfit(dataset, tmp_path, config(search="label_free", label_free="masking"))
    assert masked["label_free"]["method"] == "otsu" and "train_cam/model.pt" in masked["label_free"]["note"]
    assert masked["timings"]["items_computed"] == len(dataset)
    # the fit uses the threshold the output is judged at, not the CAM's own (which made it a no-op)
    assert manifest["thresholds"] == {"slic": free["threshold"], "quickshift": free["threshold"]}
    shutil.copytree(tmp_path / "make_cam", tmp_path / "fixed" / "make_cam")
    fixed = perimeterfit(dataset, tmp_path / "fixed", config(thresholds={"slic": 0.2, "quickshift": 0.4}))
    assert fixed["thresholds"] == {"slic": 0.2, "quickshift": 0.4} and fixed["threshold_choice"] == "config"


def test_perimeter_maps_resume_per_variant(synthetic, tmp_path):
    dataset = open_dataset(synthetic, "val")
    settings = PerimeterConfig(**FAST_USS, variants=("quickshift",))
    first = perimeter_maps(dataset, tmp_path, settings)["quickshift"]
    assert first["timings"]["items_computed"] == len(dataset)
    assert set(first["seconds_per_image"]) == {"presegment", "uss", "canny"}
    assert not (tmp_path / "perimeter_slic").exists()
    again = perimeter_maps(dataset, tmp_path, settings)["quickshift"]
    assert again["timings"]["items_computed"] == len(dataset)


def test_perimeterfit_needs_cams_and_valid_thresholds(synthetic, tmp_path):
    dataset = open_dataset(synthetic, "val")
    with pytest.raises(StageError, match="make-cam"):
        perimeterfit(dataset, tmp_path, config())
    with pytest.raises(ConfigError, match="thresholds"):
        load_config(PerimeterFitConfig, None, ["thresholds={slic: 0.3}"])
    with pytest.raises(ConfigError, match="grid"):
        load_config(PerimeterFitConfig, None, ["grid=[0.2, 1.5]"])


def test_perimeterfit_cli(synthetic, tmp_path):
    from typer.testing import CliRunner

    from tagseg.cli import app

    dataset = open_dataset(synthetic, "train")
    fake_cams(dataset, tmp_path)
    overrides = [arg for key, value in FAST_USS.items() for arg in ("--set", f"perimeter.{key}={value}")]
    result = CliRunner().invoke(app, ["perimeterfit", str(synthetic), str(tmp_path), "--device", "cpu",
                                      "--set", "grid=[0.2, 0.4]", *overrides])
    assert result.exit_code == 0, result.output
    assert "perimeterfit: mIoU" in result.output and "grid" in result.output
    saved = json.loads((tmp_path / "perimeterfit" / "manifest.json").read_text())
    assert saved["status"] == "complete" and saved["config"]["grid"] == [0.2, 0.4]


def test_perimeter_cli_prints_timings(synthetic, tmp_path):
    from typer.testing import CliRunner

    from tagseg.cli import app

    overrides = [arg for key, value in FAST_USS.items() for arg in ("--set", f"{key}={value}")]
    result = CliRunner().invoke(app, ["perimeter", str(synthetic), str(tmp_path), "--split", "val", "--device", "cpu",
                                      "--set", "variants=[slic]", *overrides])
    assert result.exit_code == 0, result.output
    assert "perimeter_slic: 2 maps" in result.output and "uss" in result.output
    assert len(list((tmp_path / "perimeter_slic").glob("*.png"))) == 2
    bad = subprocess.run([sys.executable, "-m", "tagseg.cli", "perimeter", str(synthetic), str(tmp_path),
                          "--set", "variants=[watershed]"], capture_output=True, text=True)
    assert bad.returncode == 2 and "variants.0" in bad.stderr and "Traceback" not in bad.stderr


def test_label_free_threshold_from_the_cams_follows_the_combination(tmp_path):
    from tagseg.stages.perimeterfit import from_cams

    cams = {"label_free": {"method": "expected_iou", "threshold": 0.36}}
    assert from_cams(cams, tmp_path, None, "silop") == {"method": "from_cams", "threshold": 0.18,
                                                        "cams_threshold": 0.36}
    assert from_cams(cams, tmp_path, None, "product")["threshold"] == 0.36


def test_fitting_at_the_output_threshold_grows_cams_to_whole_regions():
    """CAM threshold 0.36, so the label-free fit and output threshold is 0.18 (silop halves the
    scores the fit drops). Left of the edge every pixel scores above 0.18: the whole region passes,
    where the CAM alone passes one pixel. Right of it one pixel is below 0.18: the region is dropped,
    its scores halved, and only the pixel the CAM already passes stays positive."""
    from tagseg.refine.perimeterfit import perimeter_regions
    from tagseg.stages.perimeterfit import refine

    cam = np.array([[[0.40, 0.25, 0.20, 0.30, 0.10, 0.30, 0.50]]], np.float32)
    edge = np.array([[False, False, False, True, False, False, False]])
    refined = refine(cam, {"slic": perimeter_regions(edge)}, {"slic": 0.18}, "silop")
    assert (refined[0, 0] > 0.18).tolist() == [True, True, True, True, False, False, True]
    assert (cam[0, 0] > 0.36).tolist() == [True, False, False, False, False, False, True]
    # fitting at the CAM's own threshold instead reproduces the CAM exactly
    same = refine(cam, {"slic": perimeter_regions(edge)}, {"slic": 0.36}, "silop")
    assert ((same > 0.18) == (cam > 0.36)).all()
