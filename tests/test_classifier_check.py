"""The weak-classifier alarm: its rule, the tag-only hold-out, and the alarm end to end on shuffled tags."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tagseg.classifier_check import carve_holdout, classifier_alarm, finding_lines
from tagseg.data.dataset import open_dataset
from tagseg.data.make_synthetic import write_synthetic_dataset
from tagseg.report import write_report
from tagseg.stages import train_cam as train_cam_module
from tagseg.stages.train_cam import CamTrainConfig, train_cam

THRESHOLDS = dict(min_map=0.7, min_class_ap=0.5, min_images=10)
TINY = dict(epochs=1, min_steps=0, batch_size=4, crop_size=32, lr=0.001, weights=None)


def test_a_good_classifier_raises_no_alarm():
    alarm = classifier_alarm(0.9, {"cat": 0.95, "dog": 0.85}, {"cat": 20, "dog": 10}, **THRESHOLDS)
    assert alarm == {"fired": False, "findings": [], "classes": [], "thresholds": THRESHOLDS}
    at_the_limits = classifier_alarm(0.7, {"cat": 0.5, "dog": 0.9}, {"cat": 10, "dog": 10}, **THRESHOLDS)
    assert not at_the_limits["fired"]


def test_the_alarm_names_each_weak_class_with_its_ap_or_image_count():
    alarm = classifier_alarm(0.45, {"cat": 0.2, "dog": 0.6, "cow": 0.55, "boat": None},
                             {"cat": 30, "dog": 12, "cow": 40, "boat": 3}, **THRESHOLDS)
    assert alarm["fired"]
    assert alarm["findings"] == [
        {"kind": "low_map", "value": 0.45, "threshold": 0.7, "classes": {"cat": 0.2, "cow": 0.55, "dog": 0.6}},
        {"kind": "low_class_ap", "threshold": 0.5, "classes": {"cat": 0.2}},
        {"kind": "few_images", "threshold": 10, "classes": {"boat": 3}},
    ]
    assert list(alarm["findings"][0]["classes"]) == ["cat", "cow", "dog"]  # worst first
    assert alarm["classes"] == ["boat", "cat", "cow", "dog"]
    assert finding_lines(alarm, "val") == [
        "mAP 45.0 on val tags is below 70.0 (other classes below it: cow 55.0, dog 60.0)",
        "AP below 50.0: cat 20.0",
        "fewer than 10 training images: boat (3)",
    ]


def test_a_low_map_alone_names_the_classes_below_it():
    alarm = classifier_alarm(0.6, {"cat": 0.55, "dog": 0.65, "cow": 0.6}, {"cat": 30, "dog": 30, "cow": 30},
                             **THRESHOLDS)
    assert [f["kind"] for f in alarm["findings"]] == ["low_map"] and alarm["classes"] == ["cat", "cow", "dog"]
    assert finding_lines(alarm, None) == [
        "mAP 60.0 on held-out tags is below 70.0 (classes below it: cat 55.0, cow 60.0, dog 65.0)"]


def test_without_a_measured_map_only_image_counts_are_judged():
    alarm = classifier_alarm(None, {}, {"cat": 4, "dog": 50}, **THRESHOLDS)
    assert [f["kind"] for f in alarm["findings"]] == ["few_images"] and alarm["classes"] == ["cat"]


def test_carving_is_stratified_deterministic_and_keeps_training_images():
    labels = {f"cat{i:02d}": (1,) for i in range(20)}
    labels |= {f"dog{i:02d}": (2,) for i in range(10)}
    labels |= {f"cow{i:02d}": (3,) for i in range(5)}   # fewer than 1 / 0.1 images: none to spare
    held = carve_holdout(labels, 0.1, seed=0)
    assert held == sorted(held)
    assert sum(i.startswith("cat") for i in held) == 2 and sum(i.startswith("dog") for i in held) == 1
    assert not any(i.startswith("cow") for i in held)
    assert carve_holdout(dict(reversed(labels.items())), 0.1, seed=0) == held  # order of the split file
    assert carve_holdout(labels, 0.1, seed=1) != held
    assert carve_holdout(labels, 0.0, seed=0) == []


def test_carving_multi_tag_images_respects_every_class_quota():
    # class 1 on 12 images, class 2 on 4 of them plus 4 alone; fraction 0.25 -> quotas 3 and 2
    labels = {f"a{i}": (1, 2) if i < 4 else (1,) for i in range(12)} | {f"b{i}": (2,) for i in range(4)}
    for seed in range(5):
        held = carve_holdout(labels, 0.25, seed)
        per_class = {c: sum(c in labels[i] for i in held) for c in (1, 2)}
        assert per_class[1] <= 3 and per_class[2] <= 2 and per_class[2] >= 1, (seed, held)
        assert 8 - per_class[2] >= 6 and 12 - per_class[1] >= 9


def test_train_cam_holds_out_tags_when_there_is_no_eval_split(make_voc, tmp_path, monkeypatch):
    ids = {f"c{i:02d}": 1 for i in range(12)} | {f"d{i:02d}": 2 for i in range(12)}
    root = make_voc(ids, splits={"train": list(ids), "val": ["c00", "d00"]})
    dataset = open_dataset(root, "train")
    trained_on = []
    original = train_cam_module.TagCrops.__init__

    def spy(self, dataset, records, *args):
        trained_on.extend(r.id for r in records)
        original(self, dataset, records, *args)

    monkeypatch.setattr(train_cam_module.TagCrops, "__init__", spy)
    config = CamTrainConfig(**TINY, holdout_fraction=0.25)
    manifest = train_cam(dataset, tmp_path / "run", config)
    expected = carve_holdout({i: (c,) for i, c in ids.items()}, 0.25, seed=0)
    assert len(expected) == 6
    assert manifest["holdout"] == {"fraction": 0.25, "seed": 0, "ids": expected}
    assert sorted(trained_on) == sorted(set(ids) - set(expected))
    assert manifest["config"]["holdout_fraction"] == 0.25
    assert manifest["train_images_per_class"] == {"cat": 9, "dog": 9}
    classification = manifest["classification"]
    assert classification["source"] == "holdout" and classification["split"] == "train hold-out"
    assert classification["positives"] == {"cat": 3, "dog": 3}
    assert set(classification["per_class"]) == {"cat", "dog"} and 0 <= classification["map"] <= 1
    assert json.loads((tmp_path / "run" / "train_cam" / "manifest.json").read_text())["holdout"]["ids"] == expected

    # with an eval split nothing is held out and the stage config is what it was before the hold-out existed
    trained_on.clear()
    with_eval = train_cam(dataset, tmp_path / "eval", config, eval_dataset=open_dataset(root, "val"))
    assert sorted(trained_on) == sorted(ids) and with_eval["holdout"] is None
    assert "holdout_fraction" not in with_eval["config"] and "alarm" not in with_eval["config"]
    assert with_eval["classification"]["source"] == "eval_split"


def test_too_small_a_split_is_not_carved_and_says_so(make_voc, tmp_path, caplog):
    root = make_voc({"a": 1, "b": 2, "c": 1, "d": 2, "e": 1, "f": 2}, splits={"train": list("abcdef")})
    with caplog.at_level(logging.WARNING, logger="tagseg"):
        manifest = train_cam(open_dataset(root, "train"), tmp_path / "run", CamTrainConfig(**TINY))
    assert manifest["holdout"]["ids"] == [] and "no class has enough images" in manifest["holdout"]["skipped"]
    assert "classification" not in manifest
    assert "no tag-only hold-out" in caplog.text and "mAP is not measured" in caplog.text
    assert manifest["alarm"]["findings"] == [{"kind": "few_images", "threshold": 10, "classes": {"cat": 3, "dog": 3}}]
    assert "fewer than 10 training images: cat (3), dog (3)" in caplog.text

    # new alarm settings apply to the trained model without retraining it
    model = tmp_path / "run" / "train_cam" / "model.pt"
    before = model.stat().st_mtime_ns
    relaxed = train_cam(open_dataset(root, "train"), tmp_path / "run", CamTrainConfig(**TINY, alarm={"min_images": 3}))
    assert not relaxed["alarm"]["fired"] and model.stat().st_mtime_ns == before


def shuffled_synthetic(root):
    """Synthetic shapes whose tags are permuted across images: nothing in the pixels predicts them."""
    write_synthetic_dataset(root, 56, seed=3, size=(48, 40), val_fraction=0.25)
    lines = (root / "labels.csv").read_text().splitlines()
    ids, tags = zip(*(line.split(",", 1) for line in lines[1:]))
    shuffled = np.random.default_rng(0).permutation(len(tags))
    (root / "labels.csv").write_text("\n".join([lines[0], *(f"{i},{tags[k]}" for i, k in zip(ids, shuffled))]) + "\n")
    return root


@pytest.fixture(scope="module")
def shuffled_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("shuffled")
    data = shuffled_synthetic(base / "data")
    config = {**TINY, "epochs": 2, "crop_size": 48, "holdout_fraction": 0.25}
    logger = logging.getLogger("tagseg")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        manifest = train_cam(open_dataset(data, "train"), base / "run", CamTrainConfig(**config))
    finally:
        logger.removeHandler(handler)
    return data, base / "run", config, manifest, [r.getMessage() for r in records if r.levelno >= logging.WARNING]


def test_alarm_fires_on_a_classifier_trained_on_shuffled_tags_and_names_the_classes(shuffled_run):
    data, run, _, manifest, warnings = shuffled_run
    alarm = manifest["alarm"]
    assert manifest["classification"]["source"] == "holdout" and manifest["classification"]["map"] < 0.7
    assert alarm["fired"] and alarm["findings"][0]["kind"] == "low_map"
    named = alarm["findings"][0]["classes"]
    per_class = manifest["classification"]["per_class"]
    assert named and set(named) == {name for name, ap in per_class.items() if ap is not None and ap < 0.7}
    assert set(alarm["classes"]) <= set(open_dataset(data, "train").class_names[1:])
    [warning] = [w for w in warnings if "WEAK CLASSIFIER" in w]
    assert all(name in warning for name in alarm["classes"])
    assert "inherits the classifier's mistakes" in warning and f"tagseg data check {data}" in warning

    page = write_report(run, gallery_size=0).read_text()
    box = page[page.index('<div class="alarm">'):page.index("</div>")]
    assert page.index('<div class="alarm">') < page.index("<h2>")  # at the top
    assert "weak classifier" in box and all(name in box for name in alarm["classes"])
    assert "<h2>Classifier</h2>" in page and "tag-only hold-out" in page


def cli(*args):
    result = subprocess.run([sys.executable, "-m", "tagseg.cli", *map(str, args)], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_train_cam_and_run_commands_show_the_alarm(shuffled_run, tmp_path):
    data, run, config, manifest, _ = shuffled_run
    names = manifest["alarm"]["classes"]
    config_file = tmp_path / "cam.yaml"
    config_file.write_text(yaml.safe_dump(config))
    shown = cli("train-cam", data, run, "--config", config_file, "--eval-split", "none", "--device", "cpu")
    assert "train hold-out tags" in shown and "WARNING: weak classifier" in shown
    assert all(name in shown for name in names) and "WEAK CLASSIFIER" in (run / "tagseg.log").read_text()

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"dataset": str(data), "run": str(run), "eval_split": None, "device": "cpu",
                                      "workers": 1, "stages": {"train_cam": config}}))
    shown = cli("run", recipe)
    assert "mAP" in shown and "WARNING: weak classifier" in shown and all(name in shown for name in names)
