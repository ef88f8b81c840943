"""`tagseg report`: the stage progression plot, per-class bars, the class legend, and the page as a browser shows it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from tagseg.data.imageio import VOC_PALETTE, read_image
from tagseg.report import (LABEL_FREE_COLOUR, OVERVIEW_FILE, ORACLE_COLOUR, class_legend, overview_picture,
                           per_class_svg, progression, progression_svg, stage_rows, write_report)


def metrics(miou: float, cat: float, dog: float) -> dict:
    return {"miou": miou, "mfp": 0.2, "mfn": 0.3,
            "per_class": {"background": {"iou": 0.9}, "cat": {"iou": cat}, "dog": {"iou": dog}}}


# (stage, oracle mIoU, label-free mIoU or None for a stage that writes masks: no threshold sweep)
STAGES = [("make_cam", 0.40, 0.35), ("perimeterfit", 0.45, 0.43), ("affinity_labels", 0.90, None),
          ("random_walk", 0.55, 0.52), ("pseudo_labels", 0.60, None), ("segment_val", 0.58, None)]


def write_run(run, dataset, upper=None):
    """A finished run's manifests, as the stages write them, without training anything."""
    for stage, oracle, free in STAGES:
        manifest = {"status": "complete", "metrics": metrics(oracle, oracle - 0.1, oracle + 0.1),
                    "threshold": 0.3}
        if free is not None:
            manifest["label_free"] = {"method": "expected_iou", "threshold": 0.25,
                                      "metrics": metrics(free, free - 0.1, free + 0.1)}
        (run / stage).mkdir(parents=True)
        (run / stage / "manifest.json").write_text(json.dumps(manifest))
    (run / "train_cam").mkdir()
    (run / "train_cam" / "manifest.json").write_text(json.dumps(
        {"status": "complete", "classification": {"map": 0.95, "split": "val", "source": "eval",
                                                  "per_class": {"cat": 0.9, "dog": 1.0}}}))
    stages = {name: {"status": "complete", "seconds": 10.5} for name in ["train_cam", *[s for s, _, _ in STAGES]]}
    recipe = {"dataset": str(dataset), "upper_bound_run": str(upper) if upper else None}
    (run / "pipeline.json").write_text(json.dumps({"recipe": recipe, "stages": stages}))
    return run


def test_progression_keeps_the_scored_stages_in_order_without_seeds(tmp_path, make_voc):
    run = write_run(tmp_path / "run", make_voc())
    points = progression(stage_rows(run))
    assert [p["stage"] for p in points] == ["make_cam", "perimeterfit", "random_walk", "pseudo_labels", "segment_val"]
    assert [p["oracle"] for p in points] == [0.40, 0.45, 0.55, 0.60, 0.58]
    # mask stages have one mIoU, the same in both series
    assert [p["label_free"] for p in points] == [0.35, 0.43, 0.52, 0.60, 0.58]


def test_progression_svg_draws_both_series_and_the_bound(tmp_path, make_voc):
    points = progression(stage_rows(write_run(tmp_path / "run", make_voc())))
    svg = progression_svg(points, bound=0.8)
    assert svg.count("<circle") == 2 * len(points)
    assert ORACLE_COLOUR in svg and LABEL_FREE_COLOUR in svg
    assert "fully supervised 80.0" in svg and ">network (val)<" in svg and ">PerimeterFit<" in svg
    assert ">60.0<" in svg and ">52.0<" in svg  # values printed at the points
    assert "fully supervised" not in progression_svg(points)
    assert progression_svg([]) == ""


def test_per_class_bars_one_per_class_and_stage():
    scored = [{"stage": s, "metrics": metrics(o, o - 0.1, o + 0.1)} for s, o, _ in STAGES[:2]]
    svg = per_class_svg(scored, ["background", "cat", "dog"])
    assert svg.count("<title>") == 3 * 2
    assert "<title>cat, PerimeterFit: 35.0</title>" in svg


def test_class_legend_uses_the_mask_colours():
    legend = class_legend(["background", "cat"])
    r, g, b = VOC_PALETTE[1]
    assert f"background:rgb({r},{g},{b})" in legend and ">cat</span>" in legend and "ignored" in legend


def test_report_page_has_plot_timings_bars_and_legend(tmp_path, make_voc):
    data = make_voc()
    upper = write_run(tmp_path / "upper", data)
    page = write_report(write_run(tmp_path / "run", data, upper), gallery_size=2).read_text()
    assert page.index('id="progression"') < page.index("<h2>Stages</h2>") < page.index('id="per-class"')
    assert "ratio <b>100.0%</b>" in page and "<th>total</th><td></td><th>73.5</th>" in page
    assert page.index('class="legend"') < page.index("<img")


def test_saliency_stages_have_their_own_section_and_gallery_panels(tmp_path, make_voc):
    from tagseg.data.imageio import write_mask

    data = make_voc()
    run = write_run(tmp_path / "run", data)
    foreground = {"miou": 0.6, "per_class": {"background": {"iou": 0.8, "precision": 0.9, "recall": 0.9},
                                             "foreground": {"iou": 0.4, "precision": 0.5, "recall": 0.6}}}
    for stage, source in (("saliency", "spectral_residual"), ("refine_saliency", None)):
        (run / stage).mkdir()
        config = {"source": source} if source else {}
        (run / stage / "manifest.json").write_text(json.dumps(
            {"status": "complete", "config": config, "metrics": foreground, "unlabelled": 0.125}))
        write_mask(run / stage / "a.png", np.array([[0, 1], [255, 1]], np.uint8).repeat(12, 0).repeat(16, 1))
    assert "saliency" not in [r["stage"] for r in stage_rows(run)]  # two-class scores stay off the mIoU plot
    page = write_report(run, gallery_size=1).read_text()
    assert "model-free substitute for a trained saliency detector: foreground IoU 40.0" in page
    assert "12.5% unlabelled" in page
    assert 'alt="refined saliency"' in page and 'alt="saliency"' in page


def test_superpixel_stages_have_a_section_and_gallery_panels(tmp_path, make_voc):
    from tagseg.data.imageio import write_label_map, write_mask

    run = write_run(tmp_path / "run", make_voc())
    (run / "superpixels").mkdir()
    (run / "superpixels" / "manifest.json").write_text(json.dumps(
        {"status": "complete", "config": {"method": "discovery", "features": "cnn"}, "tau": 0.45, "tolerance": 2.0,
         "metrics": {"n": 28.9, "ue": 0.082, "asa": 0.959, "br": 0.608, "bp": 0.131}}))
    write_label_map(run / "superpixels" / "a.png", np.arange(24 * 32).reshape(24, 32) // 100)
    (run / "superpixel_seeds").mkdir()
    (run / "superpixel_seeds" / "manifest.json").write_text(json.dumps(
        {"status": "complete", "seed_quality": {"labelled_fraction": 0.3, "precision": 0.9,
                                                "foreground_precision": 0.8}}))
    write_mask(run / "superpixel_seeds" / "a.png", np.full((24, 32), 255, np.uint8))
    page = write_report(run, gallery_size=1).read_text()
    assert "28.9 per image, undersegmentation error 8.2, achievable accuracy 95.9" in page
    assert "30.0% of the pixels, precision 90.0%" in page
    assert 'alt="superpixels"' in page and 'alt="superpixel seeds"' in page


def test_overview_tiles_the_shared_columns_at_the_cell_width():
    def entry(value, panels):
        return {"pictures": {name: np.full((30, 40, 3), value, np.uint8) for name in panels}}

    entries = [entry(10, ["image", "CAM", "prediction"]), entry(200, ["image", "CAM", "ground truth"]),
               entry(99, ["image", "CAM"])]
    picture = overview_picture(entries, rows=2, cell_width=80)
    # columns every shown row has: image and CAM; rows 60 px (30 x 80/40) under a 24 px title band, 4 px gaps
    assert picture.shape == (24 + 2 * (60 + 4), 2 * 80 + 4, 3)
    assert (picture[24:84, :80] == 10).all() and (picture[88:148, 84:] == 200).all()
    assert (picture[24:84, 80:84] == 255).all()
    assert overview_picture([]) is None


def test_report_writes_the_overview_picture(tmp_path, make_voc):
    page = write_report(write_run(tmp_path / "run", make_voc()), gallery_size=2)
    picture, _ = read_image(page.parent / OVERVIEW_FILE)
    assert picture.shape[1] == 2 * 200 + 4  # image and ground truth: the stand-in run has no score maps
    assert picture.shape[0] == 24 + 2 * (150 + 4)  # two rows of 32x24 images drawn 200 px wide


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None and not os.environ.get("CI"),
                    reason="no Chromium (.ci/run installs Debian's chromium)")
def test_report_renders_in_a_headless_browser(tmp_path, make_voc):
    """Chromium shows the progression plot at the top and loads the gallery's mask pictures."""
    assert chromium(), "CI must have Chromium: .ci/run installs it"
    data = make_voc()
    page = write_report(write_run(tmp_path / "run", data), gallery_size=2)
    shot = tmp_path / "shot.png"
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,3200", f"--screenshot={shot}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels, _ = read_image(shot)

    def where(colour):
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)]) if isinstance(colour, str) else colour
        return np.nonzero(np.abs(pixels.astype(int) - rgb).sum(axis=2) <= 6)[0]

    for colour in (ORACLE_COLOUR, LABEL_FREE_COLOUR):
        rows = where(colour)
        assert len(rows) > 200 and np.median(rows) < 700, f"the progression plot in {colour} is not at the top"
    # the gallery's ground-truth pictures: each labels a 14x12 block of the 32x24 image, drawn 200 px wide
    # (about 6,500 pixels each); the legend's swatches hold at most 196 pixels of a colour
    assert len(where(VOC_PALETTE[1])) > 3000 and len(where(VOC_PALETTE[2])) > 3000
