"""`tagseg run` recipes (validation, kill between stages and resume) and `tagseg report`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tagseg.data.make_synthetic import write_synthetic_dataset
from tagseg.errors import ConfigError
from tagseg.pipeline import load_recipe, run_recipe
from tagseg.report import write_report

TINY_STAGES = {
    "train_cam": {"epochs": 1, "min_steps": 0, "batch_size": 4, "crop_size": 64, "lr": 0.001, "weights": None},
    "make_cam": {"scales": [1.0]},
    "perimeterfit": {"grid": [0.2, 0.4], "perimeter": {"clusters": 8, "iterations": 6, "min_clusters": 3,
                                                       "slic_segments": 100, "max_side": 48}},
    "affinity_labels": {"cams": "perimeterfit", "crf": False},
    "train_affinity": {"epochs": 1, "min_steps": 0, "batch_size": 2, "crop_size": 64, "radius": 3, "weights": None},
    "random_walk": {"cams": "perimeterfit", "radius": 3, "logt": 3},
    "pseudo_labels": {"crf": False},
    "train_seg": {"epochs": 1, "min_steps": 0, "batch_size": 2, "crop_size": 64, "weights": None},
    "segment": {"scales": [1.0]},
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_dataset(root, 8, seed=5, size=(64, 48), val_fraction=0.25)
    return root


def write_recipe(path, data, run, stages=None, **extra):
    path.write_text(yaml.safe_dump({"dataset": str(data), "run": str(run), "device": "cpu", "workers": 1,
                                    "stages": stages or TINY_STAGES, **extra}, sort_keys=False))
    return path


def test_recipe_validation_names_the_key(synthetic, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", synthetic, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"stages.train_cam: invalid config: epochs"):
        load_recipe(recipe, ["stages.train_cam.epochs=zero"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_recipe(recipe, ["stages.random_walk.betta=3"])
    with pytest.raises(ConfigError, match="unknown stage"):
        load_recipe(write_recipe(tmp_path / "bad.yaml", synthetic, tmp_path / "run", {"train_kam": {}}))
    with pytest.raises(ConfigError, match="dataset"):
        load_recipe(recipe, ["dataset=[1, 2]"])
    _, configs = load_recipe(recipe, ["stages.train_cam.epochs=2"])
    assert configs["train_cam"].epochs == 2 and list(configs) == list(TINY_STAGES)


RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_shipped_recipes_validate(recipe):
    """Every recipe in recipes/ is a valid recipe whose stages end in a segmentation network."""
    loaded, configs = load_recipe(recipe)
    assert loaded.stages and "train_seg" in configs


def test_kill_between_stages_then_resume(synthetic, tmp_path):
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", synthetic, run)
    process = subprocess.Popen([sys.executable, "-m", "tagseg.cli", "run", str(recipe)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record_path = run / "pipeline.json"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once make_cam is finished and a later stage has started
        if record_path.exists():
            stages = json.loads(record_path.read_text() or "{}").get("stages", {})
            if stages.get("make_cam", {}).get("status") == "complete" and "perimeterfit" in stages:
                break
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    model = run / "train_cam" / "model.pt"
    cams = sorted((run / "make_cam").glob("*.npz"))
    stamps = {p: p.stat().st_mtime_ns for p in [model, *cams]}

    recipe_model, configs = load_recipe(recipe)
    record = run_recipe(recipe_model, configs)
    assert all(entry["status"] == "complete" for entry in record["stages"].values())
    assert list(record["stages"]) == list(TINY_STAGES)
    assert record["image_size"] == 64  # the synthetic photos' long side, given to every size-dependent stage
    assert json.loads((run / "make_cam" / "manifest.json").read_text())["config"]["image_size"] == 64
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished stages were not recomputed
    assert (run / "segment_val").is_dir() and json.loads((run / "segment_val" / "manifest.json").read_text())["metrics"]

    again = run_recipe(recipe_model, configs)
    assert again["stages"] == record["stages"]  # nothing left to do

    page = write_report(run, gallery_size=2)
    text = page.read_text()
    for stage in ("make_cam", "perimeterfit", "random_walk", "pseudo_labels", "segment_val"):
        assert stage in text
    assert "Final (segment_val) mIoU" in text and "<svg" in text
    images = [line.split('src="')[1].split('"')[0] for line in text.split("<img")[1:]]
    assert len(images) >= 2 * 8  # image, truth, CAM, perimeter, refined, walk, seeds, pseudo-label, prediction
    assert all((page.parent / src).exists() for src in images)
    compared = write_report(run, upper_bound=run, gallery_size=0).read_text()
    assert "fully supervised upper bound" in compared and "ratio <b>100.0%</b>" in compared

    # a run and its dataset copied elsewhere (new paths, new modification times) keep every stage finished
    moved_data, moved_run = tmp_path / "elsewhere" / "data", tmp_path / "elsewhere" / "run"
    shutil.copytree(synthetic, moved_data, copy_function=shutil.copyfile)
    shutil.copytree(run, moved_run, copy_function=shutil.copyfile)
    shutil.rmtree(run)
    files = {p: p.stat().st_mtime_ns for p in moved_run.rglob("*") if p.is_file() and p.suffix in (".npz", ".png", ".pt")}
    moved_model, moved_configs = load_recipe(write_recipe(tmp_path / "moved.yaml", moved_data, moved_run))
    moved = run_recipe(moved_model, moved_configs)
    assert moved["stages"] == record["stages"]
    assert all(p.stat().st_mtime_ns == t for p, t in files.items())


def test_a_rescored_walk_reaches_its_pseudo_labels_and_network(synthetic, tmp_path):
    """A new label-free rule on the walk rescores it; the stages after it are asked again (not skipped by
    pipeline.json): pseudo-labels made at the old threshold are refused, naming it, and --force remakes them
    and retrains the network on them, leaving the classifier and CAMs alone."""
    from tagseg.errors import StageError

    chain = ("train_cam", "make_cam", "affinity_labels", "train_affinity", "random_walk", "pseudo_labels", "train_seg")
    stages = {name: dict(TINY_STAGES[name]) for name in chain}
    stages["affinity_labels"]["cams"] = stages["random_walk"]["cams"] = "make_cam"
    stages["random_walk"]["label_free"] = "from_source"
    run = tmp_path / "run"
    recipe_file = write_recipe(tmp_path / "r.yaml", synthetic, run, stages, eval_split=None)
    run_recipe(*load_recipe(recipe_file))
    kept = [run / "train_cam" / "model.pt", *sorted((run / "make_cam").glob("*.npz"))]
    stamps = {p: p.stat().st_mtime_ns for p in kept}
    network = run / "train_seg" / "model.pt"
    trained = network.stat().st_mtime_ns
    before = json.loads((run / "pseudo_labels" / "manifest.json").read_text())["threshold"]

    rescored = load_recipe(recipe_file, ["stages.random_walk.label_free=expected_iou"])
    with pytest.raises(StageError, match=r"pseudo_labels.*source_threshold.*--force"):
        run_recipe(*rescored)
    walk = json.loads((run / "random_walk" / "manifest.json").read_text())["label_free"]
    assert walk["method"] == "expected_iou" and walk["threshold"] != before  # the walk itself was rescored

    record = run_recipe(*rescored, force=True)
    assert json.loads((run / "pseudo_labels" / "manifest.json").read_text())["threshold"] == walk["threshold"]
    assert network.stat().st_mtime_ns != trained  # retrained on the new pseudo-labels
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert run_recipe(*rescored)["stages"] == record["stages"]  # and nothing is left to do
