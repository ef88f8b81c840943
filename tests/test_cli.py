"""The command line end to end, in subprocesses, as a user runs it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_MSRC
from tagseg.artifacts import load_score_map


def tagseg(*args, cwd=None, check=True):
    result = subprocess.run([sys.executable, "-m", "tagseg.cli", *map(str, args)], capture_output=True, text=True,
                            cwd=cwd, env={**os.environ, "COLUMNS": "200"})
    if check and result.returncode != 0:
        raise AssertionError(f"tagseg {args} failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.mark.parametrize("command", [[], ["data"], ["data", "check"], ["data", "synth"], ["eval"], ["prior"],
                                     ["train-cam"], ["make-cam"], ["perimeter"], ["perimeterfit"], ["affinity-labels"],
                                     ["boundary-labels"], ["train-affinity"], ["boundary-maps"], ["random-walk"],
                                     ["pseudo-labels"], ["train-seg"], ["segment"], ["predict"]])
def test_every_command_has_help(command):
    result = tagseg(*command, "--help")
    assert "Usage: " in result.stdout


def test_synth_check_prior_eval_on_synthetic_data(tmp_path):
    data = tmp_path / "data"
    tagseg("data", "synth", data, "--count", 24, "--width", 64, "--height", 48)
    again = tagseg("data", "synth", data, "--count", 24, "--width", 64, "--height", 48)
    assert "0 generated now" in again.stderr
    check = tagseg("data", "check", data, "--json", tmp_path / "check.json")
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["splits"] == {"train": 18, "val": 6} and report["num_classes"] == 7 and not report["errors"]
    assert "no errors" in check.stderr

    tagseg("prior", data, tmp_path / "run", "--split", "val")
    manifest = json.loads((tmp_path / "run" / "prior" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and 0 < manifest["metrics"]["miou"] < 1
    result = tagseg("eval", tmp_path / "run" / "prior", data, "--split", "val")
    evaluation = json.loads((tmp_path / "run" / "prior" / "eval_val.json").read_text())
    assert evaluation["metrics"]["miou"] == manifest["metrics"]["miou"]
    assert len(evaluation["curve"]) == 100 and "background threshold" in result.stderr
    assert (tmp_path / "run" / "tagseg.log").exists()


def test_synth_object_size_is_recorded_and_validated(tmp_path):
    data = tmp_path / "data"
    tagseg("data", "synth", data, "--count", 4, "--width", 64, "--height", 48, "--object-size", 0.3, 0.6)
    assert json.loads((data / "synthetic.json").read_text())["config"]["object_size"] == [0.3, 0.6]
    bad = tagseg("data", "synth", tmp_path / "bad", "--count", 4, "--object-size", 0.6, 0.3, check=False)
    assert bad.returncode != 0 and "object_size" in bad.stderr and not (tmp_path / "bad").exists()


def test_eval_ground_truth_against_itself_is_100(make_voc, tmp_path):
    root = make_voc()
    result = tagseg("eval", root / "SegmentationClass", root, "--json", tmp_path / "e.json")
    assert "mIoU 100.00" in result.stderr
    assert json.loads((tmp_path / "e.json").read_text())["metrics"]["miou"] == 1.0
    # a plain folder of masks as ground truth, with the class names passed explicitly
    tagseg("eval", root / "SegmentationClass", root / "SegmentationClass", "--classes", root / "classes.txt",
           cwd=tmp_path)
    assert json.loads((tmp_path / "eval_SegmentationClass.json").read_text())["metrics"]["miou"] == 1.0


def test_eval_reports_missing_and_mismatched_predictions(make_voc, tmp_path):
    root = make_voc()
    predictions = tmp_path / "pred"
    shutil.copytree(root / "SegmentationClass", predictions)
    (predictions / "b.png").unlink()
    result = tagseg("eval", predictions, root, check=False)
    assert result.returncode == 2 and "1 of 4 images have no prediction <id>.png (e.g. b)" in result.stderr
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(predictions / "b.png")
    result = tagseg("eval", predictions, root, check=False)
    assert "b.png: prediction is 3x3 but ground truth b.png is 32x24" in result.stderr


def test_bad_dataset_exits_nonzero_with_file_names(make_voc):
    root = make_voc()
    (root / "JPEGImages" / "c.jpg").write_bytes(b"junk")
    result = tagseg("data", "check", root, check=False)
    assert result.returncode == 1 and "c.jpg: cannot decode image" in result.stderr
    assert "Traceback" not in result.stderr


def test_changed_config_is_refused_then_forced(make_voc, tmp_path):
    root = make_voc()
    tagseg("prior", root, tmp_path / "run")
    refused = tagseg("prior", root, tmp_path / "run", "--sigma", 0.5, check=False)
    assert refused.returncode == 2 and "sigma: 0.3 -> 0.5" in refused.stderr and "--force" in refused.stderr
    tagseg("prior", root, tmp_path / "run", "--sigma", 0.5, "--force")
    assert json.loads((tmp_path / "run" / "prior" / "manifest.json").read_text())["config"]["sigma"] == 0.5


def test_killed_stage_resumes_remaining_images_only(tmp_path):
    root, count = tmp_path / "big", 400
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    Image.fromarray(np.zeros((360, 480, 3), np.uint8)).save(root / "JPEGImages" / "img0000.jpg")
    for k in range(1, count):
        shutil.copy(root / "JPEGImages" / "img0000.jpg", root / "JPEGImages" / f"img{k:04d}.jpg")
    (root / "classes.txt").write_text("background\ncat\ndog\nbird\n")
    (root / "labels.csv").write_text("image,tags\n" + "".join(f"img{k:04d},cat dog bird\n" for k in range(count)))
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(f"img{k:04d}" for k in range(count)))
    stage = tmp_path / "run" / "prior"
    process = subprocess.Popen([sys.executable, "-m", "tagseg.cli", "prior", str(root), str(tmp_path / "run"),
                                "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(stage.glob("img*.npz"))) < 20:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = {p.name: p.stat().st_mtime_ns for p in stage.glob("img*.npz")}
    assert 20 <= len(before) < count, "the stage should have been killed mid-way"
    for path in stage.glob("img*.npz"):
        scores, _ = load_score_map(path)  # every visible file is whole
        assert scores.shape == (3, 360, 480)
    resumed = tagseg("prior", root, tmp_path / "run")
    assert f"{count - len(before)} of {count} images to do" in resumed.stderr
    after = {p.name: p.stat().st_mtime_ns for p in stage.glob("img*.npz")}
    assert len(after) == count and all(after[name] == mtime for name, mtime in before.items())
    assert not [p for p in stage.iterdir() if ".tmp-" in p.name]
    assert json.loads((stage / "manifest.json").read_text())["status"] == "complete"


@pytest.mark.skipif(not SHARED_MSRC.exists(), reason="needs ../shared/data/msrc-voc")
def test_data_check_on_msrc_voc():
    result = tagseg("data", "check", SHARED_MSRC)
    assert "train images │ 346" in result.stderr and "val images   │ 148" in result.stderr
    assert "15 (background + 14)" in result.stderr and "no errors" in result.stderr


def test_train_cam_and_make_cam_commands(tmp_path):
    data = tmp_path / "data"
    tagseg("data", "synth", data, "--count", 12, "--width", 64, "--height", 48)
    config = tmp_path / "cam.yaml"
    config.write_text("epochs: 1\nmin_steps: 0\nbatch_size: 4\ncrop_size: 64\nlr: 0.001\n")
    trained = tagseg("train-cam", data, tmp_path / "run", "--config", config, "--set", "head=attention",
                     "--device", "cpu")
    assert "mAP" in trained.stderr
    manifest = json.loads((tmp_path / "run" / "train_cam" / "manifest.json").read_text())
    assert manifest["config"]["head"] == "attention" and manifest["config"]["epochs"] == 1
    made = tagseg("make-cam", data, tmp_path / "run", "--set", "scales=[1.0]", "--device", "cpu")
    assert "label-free threshold" in made.stderr
    assert len(list((tmp_path / "run" / "make_cam").glob("synth_*.npz"))) == 9


def test_stage_command_errors_are_clear(tmp_path, make_voc):
    root = make_voc()
    bad = tagseg("train-cam", root, tmp_path / "run", "--set", "epoch=3", check=False)
    assert bad.returncode == 2 and "epoch: unknown key" in bad.stderr
    missing = tagseg("make-cam", root, tmp_path / "run", check=False)
    assert missing.returncode == 2 and "no trained CAM model" in missing.stderr
    import torch

    if not torch.cuda.is_available():
        no_gpu = tagseg("train-cam", root, tmp_path / "run", "--device", "cuda", check=False)
        assert no_gpu.returncode == 2 and "no CUDA GPU" in no_gpu.stderr
