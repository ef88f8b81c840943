"""``on_error: skip``: corrupt and truncated images are named, listed and left out; nothing partial."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from tagseg.cli import app
from tagseg.data.dataset import open_dataset
from tagseg.data.make_synthetic import write_synthetic_dataset
from tagseg.errors import DataError
from tagseg.pipeline import load_recipe, run_recipe
from tagseg.report import write_report
from tagseg.rundir import read_manifest
from tagseg.stages.pseudo_labels import PseudoLabelConfig, make_pseudo_labels
from test_perimeterfit_stage import fake_cams
from test_pipeline import TINY_STAGES, write_recipe

CORRUPT, TRUNCATED, CORRUPT_VAL = "synth_00000", "synth_00003", "synth_00009"


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """10 synthetic images (8 train, 2 val): one train image corrupt, one truncated, one val image corrupt."""
    root = tmp_path_factory.mktemp("broken") / "data"
    write_synthetic_dataset(root, 10, seed=7, size=(64, 48), val_fraction=0.2)
    images = root / "JPEGImages"
    whole = (images / f"{TRUNCATED}.jpg").read_bytes()
    (images / f"{TRUNCATED}.jpg").write_bytes(whole[: len(whole) // 3])
    for item in (CORRUPT, CORRUPT_VAL):
        (images / f"{item}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    assert open_dataset(root, "val").ids[-1] == CORRUPT_VAL
    return root


def outputs_of(run, item):
    return sorted(p.relative_to(run) for p in run.rglob(f"{item}.*") if "report" not in p.parts)


def test_skip_mode_runs_the_pipeline_without_the_bad_images(broken, tmp_path):
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", broken, run, on_error="skip")
    result = CliRunner().invoke(app, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    summary = re.sub(r"\s+", " ", result.output)
    assert "skipped 3 unreadable image(s)" in summary
    assert all(item in summary.split("skipped 3 unreadable image(s)")[1] for item in (CORRUPT, TRUNCATED, CORRUPT_VAL))

    log = (run / "tagseg.log").read_text()
    for item in (CORRUPT, TRUNCATED, CORRUPT_VAL):  # named on one line, with the reason
        assert len([line for line in log.splitlines() if f"{item}.jpg" in line]) == 1
        assert re.search(rf"skipped: \S*{item}\.jpg: cannot decode image", log)

    bad_train = {CORRUPT, TRUNCATED}
    per_image = ["make_cam", "perimeter_slic", "perimeter_quickshift", "perimeterfit", "affinity_labels",
                 "random_walk", "pseudo_labels"]
    for stage in per_image + ["train_affinity", "train_seg"]:
        manifest = read_manifest(run / stage)
        assert set(manifest["skipped"]["images"]) == bad_train, stage
        assert "cover the other 6" in manifest["skipped"]["note"]
    assert "cannot decode image" in read_manifest(run / "make_cam")["skipped"]["images"][TRUNCATED]
    assert set(read_manifest(run / "train_cam")["skipped"]["images"]) == bad_train | {CORRUPT_VAL}
    assert set(read_manifest(run / "segment_val")["skipped"]["images"]) == {CORRUPT_VAL}

    # nothing partial: no file anywhere for a skipped image; every other image is done
    for item in (CORRUPT, TRUNCATED, CORRUPT_VAL):
        assert outputs_of(run, item) == []
    for stage, suffix in (("make_cam", ".npz"), ("perimeterfit", ".npz"), ("random_walk", ".npz"),
                          ("perimeter_slic", ".png"), ("affinity_labels", ".png"), ("pseudo_labels", ".png")):
        assert len(list((run / stage).glob(f"*{suffix}"))) == 6, stage
    assert [p.stem for p in (run / "segment_val").glob("*.png")] == ["synth_00008"]
    # training saw the 6 good images only
    for stage in ("train_cam", "train_affinity", "train_seg"):
        assert read_manifest(run / stage)["train_images"] == 6, stage
    assert read_manifest(run / "segment_val")["metrics"]["miou"] is not None

    text = write_report(run, gallery_size=8).read_text()  # the gallery does not trip over the bad images
    assert "Skipped images" in text
    for item in (CORRUPT, TRUNCATED, CORRUPT_VAL):
        assert re.search(rf"<td>{item}</td><td>\S*{item}\.jpg: cannot decode image", text)
    assert "make_cam, perimeter_quickshift" in text

    scored = CliRunner().invoke(app, ["eval", str(run / "segment_val"), str(broken), "--split", "val"])
    assert scored.exit_code == 0, scored.output
    assert f"left out 1 image(s) the stage skipped: {CORRUPT_VAL}" in scored.output
    assert json.loads((run / "segment_val" / "eval_val.json").read_text())["skipped"] == [CORRUPT_VAL]


def test_stop_mode_stops_at_the_first_bad_image_naming_it_and_skip_resumes(broken, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", broken, tmp_path / "run", {"train_cam": TINY_STAGES["train_cam"]})
    with pytest.raises(DataError, match=rf"({CORRUPT}|{TRUNCATED})\.jpg: cannot decode image"):
        run_recipe(*load_recipe(recipe))
    with pytest.raises(DataError, match=rf"({CORRUPT}|{TRUNCATED})\.jpg: cannot decode image"):
        run_recipe(*load_recipe(recipe, ["on_error=stop"]))
    assert not (tmp_path / "run" / "train_cam" / "model.pt").exists()
    record = run_recipe(*load_recipe(recipe, ["on_error=skip"]))  # the same run goes on, leaving them out
    assert record["stages"]["train_cam"]["status"] == "complete"
    assert read_manifest(tmp_path / "run" / "train_cam")["train_images"] == 6


def test_stage_command_option_and_default(broken, tmp_path):
    run = tmp_path / "run"
    stopped = CliRunner().invoke(app, ["prior", str(broken), str(run)])
    assert stopped.exit_code != 0 and isinstance(stopped.exception, DataError)
    assert f"{CORRUPT}.jpg: cannot decode image" in str(stopped.exception)
    shutil.rmtree(run)

    done = CliRunner().invoke(app, ["prior", str(broken), str(run), "--on-error", "skip"])
    assert done.exit_code == 0, done.output
    assert f"{CORRUPT}.jpg" in done.output and f"{TRUNCATED}.jpg" in done.output
    manifest = read_manifest(run / "prior")
    assert set(manifest["skipped"]["images"]) == {CORRUPT, TRUNCATED}
    assert sorted(p.stem for p in (run / "prior").glob("*.npz")) == sorted(
        set(open_dataset(broken, "train").ids) - {CORRUPT, TRUNCATED})
    assert manifest["metrics"]["miou"] is not None  # scored over the kept images

    bad = CliRunner().invoke(app, ["prior", str(broken), str(run), "--on-error", "ignore"])
    assert bad.exit_code == 2 and "ignore" in bad.output


def test_a_stage_leaves_out_what_its_source_stage_skipped(broken, tmp_path):
    """pseudo_labels (stop mode, no image reads) on a score stage that skipped two images: no missing-file
    error, the two are listed and left out, and the masks are scored over the rest."""
    dataset = open_dataset(broken, "train")
    reasons = {CORRUPT: "corrupt", TRUNCATED: "truncated"}
    fake_cams(dataset.leave_out(reasons), tmp_path)
    (tmp_path / "make_cam" / "manifest.json").write_text(json.dumps(
        {**read_manifest(tmp_path / "make_cam"), "skipped": {"images": reasons}, "label_free": {"threshold": 0.3}}))
    config = PseudoLabelConfig(scores="make_cam", crf=False)
    manifest = make_pseudo_labels(dataset, tmp_path, config)
    assert manifest["skipped"]["images"] == reasons
    assert sorted(p.stem for p in (tmp_path / "pseudo_labels").glob("*.png")) == sorted(set(dataset.ids) - set(reasons))
    shutil.copytree(tmp_path / "make_cam", tmp_path / "kept" / "make_cam")
    kept = make_pseudo_labels(dataset.leave_out(reasons), tmp_path / "kept", config)
    assert manifest["metrics"] == kept["metrics"]  # scored over the kept images only
