"""`tagseg report RUN`: one static HTML page (plus PNGs) showing what every stage of a run achieved.

The page opens with the stage progression (mIoU of every scored stage, oracle and label-free,
beside the fully supervised bound when there is one), then a weak-classifier warning box when
train_cam's alarm fired, per-stage metrics and timings, the classifier's per-class AP, per-class
IoU as a table and as bars, threshold curves, and a gallery of training images with each
stage's output side by side under a legend of the class colours. Every chart is inline SVG, so
the page needs no plotting library and no network. Images the stages skipped
(``on_error: skip``) are listed with the reason and the stages that left them out.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path

import cv2
import numpy as np

from tagseg.artifacts import load_score_map
from tagseg.classifier_check import advice, finding_lines
from tagseg.data.dataset import open_dataset
from tagseg.data.imageio import (IGNORE_INDEX, VOC_PALETTE, colorize, read_boundary_map, read_image, read_label_map,
                                 read_mask, write_image)
from tagseg.pipeline import PIPELINE_FILE
from tagseg.refine.bes import BOUNDARY, FOREGROUND, IGNORE
from tagseg.rundir import atomic_write_text, read_manifest
from tagseg.sizing import REFERENCE_SIZE, input_scales, resolve_image_size
from tagseg.skipping import skipped_in_run

REPORT_DIR = "report"
log = logging.getLogger(__name__)
SCORE_STAGES = ("make_cam", "perimeterfit", "random_walk")
MASK_STAGES = ("affinity_labels", "pseudo_labels")
FOREGROUND_STAGES = {"saliency": "saliency", "refine_saliency": "refined saliency"}  # class-agnostic masks
SALIENCY_SOURCES = {"folder": "your saliency maps", "ground_truth": "the binarised ground truth (an oracle, not a "
                    "label-free result)", "spectral_residual": "OpenCV's spectral residual saliency, a model-free "
                    "substitute for a trained saliency detector", "fine_grained": "OpenCV's fine-grained saliency, "
                    "a model-free substitute for a trained saliency detector"}


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def stage_rows(run: Path) -> list[dict]:
    """One row per stage directory of the run that recorded metrics, in pipeline order."""
    rows = []
    for directory in sorted(p for p in run.iterdir() if p.is_dir() and (p / "manifest.json").exists()):
        if directory.name in FOREGROUND_STAGES:  # two-class scores: see saliency_summary
            continue
        manifest = read_manifest(directory) or {}
        metrics = manifest.get("metrics")
        if not metrics and not manifest.get("classification"):
            continue
        free = manifest.get("label_free") or {}
        rows.append({"stage": directory.name, "metrics": metrics or {}, "threshold": manifest.get("threshold"),
                     "label_free": free, "curve": manifest.get("curve") or [],
                     "classification": manifest.get("classification"), "manifest": manifest})
    order = {name: i for i, name in enumerate(["train_cam", "make_cam", "perimeterfit", "affinity_labels",
                                               "random_walk", "pseudo_labels", "train_seg"])}
    return sorted(rows, key=lambda r: (order.get(r["stage"], 50), r["stage"]))


def curve_svg(curve: list[dict], width: int = 320, height: int = 160) -> str:
    """mIoU (blue) and mFP / mFN (grey, dashed) against the background threshold."""
    points = [(c["threshold"], c["miou"]) for c in curve if c["miou"] is not None]
    if not points:
        return ""
    def polyline(values, style):
        coords = " ".join(f"{30 + t * (width - 40):.1f},{height - 20 - v * (height - 30):.1f}" for t, v in values)
        return f'<polyline fill="none" {style} points="{coords}"/>'
    best = max(points, key=lambda p: p[1])
    parts = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
             f'<rect x="30" y="10" width="{width - 40}" height="{height - 30}" fill="none" stroke="#ccc"/>',
             polyline(points, 'stroke="#1f5fbf" stroke-width="2"'),
             f'<text x="30" y="{height - 5}" font-size="10">0</text>',
             f'<text x="{width - 20}" y="{height - 5}" font-size="10">1</text>',
             '<text x="2" y="14" font-size="10">mIoU</text>',
             f'<text x="{width / 2 - 40}" y="{height - 5}" font-size="10">bg threshold; best {best[0]:.2f}: '
             f'{100 * best[1]:.1f}</text>']
    for key, colour in (("mfp", "#c44"), ("mfn", "#888")):
        values = [(c["threshold"], min(c[key], 1.0)) for c in curve if c.get(key) is not None]
        if values:
            parts.append(polyline(values, f'stroke="{colour}" stroke-dasharray="4 2"'))
    return "".join(parts) + "</svg>"


STAGE_TITLES = {"make_cam": "CAM", "perimeterfit": "PerimeterFit", "random_walk": "random walk",
                "pseudo_labels": "pseudo-labels"}
ORACLE_COLOUR, LABEL_FREE_COLOUR, BOUND_COLOUR = "#1f5fbf", "#e07b00", "#2a9d3a"
BAR_COLOURS = ("#9ecae1", "#6baed6", "#3182bd", "#08519c", "#e6550d", "#a63603", "#31a354", "#756bb1")


def stage_title(stage: str) -> str:
    """A reader's name for a stage directory: segment_val -> 'network (val)'."""
    if stage.startswith("segment_"):
        return f"network ({stage.removeprefix('segment_')})"
    return STAGE_TITLES.get(stage, stage.replace("_", " "))


def progression(rows: list[dict]) -> list[dict]:
    """The stages that turn tags into masks, in pipeline order, each with its mIoU at the oracle and the
    label-free threshold. Seeds (affinity_labels) are left out: they label only part of the pixels.
    A stage that writes masks was not swept over thresholds: its one mIoU is shown in both series."""
    points = []
    for row in rows:
        miou = row["metrics"].get("miou")
        if miou is None or row["stage"] == "affinity_labels":
            continue
        free = (row["label_free"].get("metrics") or {}).get("miou")
        points.append({"stage": row["stage"], "oracle": miou, "label_free": miou if free is None else free})
    return points


def progression_svg(points: list[dict], bound: float | None = None, width: int = 640, height: int = 260) -> str:
    """mIoU per stage as two lines (oracle blue, label-free orange) with the fully supervised bound dashed.

    The bound's label sits at the left, over the CAM, the stage that is usually furthest below it."""
    if not points:
        return ""
    left, right, top, bottom = 44, 16, 16, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    step = plot_w / len(points)

    def x(i):  # each stage in the middle of its own column, so the labels fit
        return left + (i + 0.5) * step

    def y(v):
        return top + plot_h * (1 - v)

    parts = [f'<svg id="progression" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" '
             'font-family="sans-serif" font-size="11">']
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{100 * tick:.0f}</text>')
    parts.append(f'<text x="4" y="{top + plot_h / 2:.0f}" transform="rotate(-90 10 {top + plot_h / 2:.0f})" '
                 'text-anchor="middle">mIoU</text>')
    if bound is not None:
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(bound):.1f}" y2="{y(bound):.1f}" '
                     f'stroke="{BOUND_COLOUR}" stroke-width="2" stroke-dasharray="6 3"/>'
                     f'<text x="{left + 4}" y="{y(bound) - 5:.1f}" fill="{BOUND_COLOUR}">'
                     f'fully supervised {100 * bound:.1f}</text>')
    for key, colour, dash, dy in (("oracle", ORACLE_COLOUR, "", -8), ("label_free", LABEL_FREE_COLOUR, "5 3", 16)):
        coords = [(x(i), y(p[key])) for i, p in enumerate(points) if p[key] is not None]
        if not coords:
            continue
        line = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="3" stroke-dasharray="{dash}" '
                     f'points="{line}"/>')
        for (cx, cy), p in zip(coords, [p for p in points if p[key] is not None]):
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{colour}"/>'
                         f'<text x="{cx:.1f}" y="{cy + dy:.1f}" text-anchor="middle" fill="{colour}">'
                         f'{100 * p[key]:.1f}</text>')
    for i, p in enumerate(points):
        parts.append(f'<text x="{x(i):.1f}" y="{height - bottom + 18}" text-anchor="middle">'
                     f'{html.escape(stage_title(p["stage"]))}</text>')
    legend_y = height - 8
    parts.append(f'<rect x="{left}" y="{legend_y - 9}" width="14" height="4" fill="{ORACLE_COLOUR}"/>'
                 f'<text x="{left + 18}" y="{legend_y}">oracle threshold</text>'
                 f'<rect x="{left + 130}" y="{legend_y - 9}" width="14" height="4" fill="{LABEL_FREE_COLOUR}"/>'
                 f'<text x="{left + 148}" y="{legend_y}">label-free threshold</text>')
    return "".join(parts) + "</svg>"


def per_class_svg(scored: list[dict], classes: list[str], bar: int = 7, height: int = 180) -> str:
    """Per-class IoU as grouped bars, one colour per stage (oracle threshold), with a legend."""
    left, top, bottom = 36, 10, 40
    group = bar * len(scored) + 10
    width = left + group * len(classes) + 10
    plot_h = height - top - bottom
    parts = [f'<svg id="per-class" width="{max(width, 320)}" height="{height + 18 * len(scored)}" '
             'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="10">']
    for tick in (0, 0.5, 1.0):
        ty = top + plot_h * (1 - tick)
        parts.append(f'<line x1="{left}" x2="{width}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 4}" y="{ty + 3:.1f}" text-anchor="end">{100 * tick:.0f}</text>')
    for c, name in enumerate(classes):
        gx = left + 5 + c * group
        for s, row in enumerate(scored):
            iou = row["metrics"]["per_class"].get(name, {}).get("iou") or 0.0
            parts.append(f'<rect x="{gx + s * bar}" y="{top + plot_h * (1 - iou):.1f}" width="{bar - 1}" '
                         f'height="{plot_h * iou:.1f}" fill="{BAR_COLOURS[s % len(BAR_COLOURS)]}">'
                         f'<title>{html.escape(name)}, {html.escape(stage_title(row["stage"]))}: {100 * iou:.1f}'
                         '</title></rect>')
        parts.append(f'<text x="{gx + bar * len(scored) / 2:.1f}" y="{top + plot_h + 12}" text-anchor="end" '
                     f'transform="rotate(-35 {gx + bar * len(scored) / 2:.1f} {top + plot_h + 12})">'
                     f'{html.escape(name)}</text>')
    for s, row in enumerate(scored):
        ly = height + 18 * s
        parts.append(f'<rect x="{left}" y="{ly}" width="12" height="12" fill="{BAR_COLOURS[s % len(BAR_COLOURS)]}"/>'
                     f'<text x="{left + 16}" y="{ly + 10}">{html.escape(stage_title(row["stage"]))}</text>')
    return "".join(parts) + "</svg>"


def class_legend(class_names: list[str]) -> str:
    """The gallery's colour key: one swatch per class, in the colours of the mask pictures."""
    swatches = "".join(
        f'<span class="swatch"><span style="background:rgb({r},{g},{b})"></span>{html.escape(name)}</span>'
        for name, (r, g, b) in zip(class_names, VOC_PALETTE[: len(class_names)].tolist()))
    r, g, b = VOC_PALETTE[IGNORE_INDEX].tolist()
    return f'<p class="legend">{swatches}<span class="swatch"><span style="background:rgb({r},{g},{b})"></span>' \
           'ignored</span></p>'


def heatmap(scores: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Best class score per pixel as a JET heatmap over the darkened image."""
    best = scores.max(axis=0) if len(scores) else np.zeros(image.shape[:2], np.float32)
    colours = cv2.applyColorMap(np.clip(best * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return (0.4 * image + 0.6 * colours).astype(np.uint8)


def boundary_label_picture(labels: np.ndarray) -> np.ndarray:
    """BES boundary labels as grey levels: boundary white, foreground grey, background black, ignored blue."""
    picture = np.zeros((*labels.shape, 3), np.uint8)
    picture[labels == BOUNDARY] = 255
    picture[labels == FOREGROUND] = 128
    picture[labels == IGNORE] = (40, 60, 140)
    return picture


def gallery(run: Path, dataset, ids: list[str], out: Path, device: str = "cpu",
            image_size: int = REFERENCE_SIZE) -> list[dict]:
    """Write the gallery PNGs; returns per image the (column, file name) pairs and the pictures.

    The prediction is made at one scale, the size a 320 px photo is segmented at (``image_size``:
    the run's), so a small photo is enlarged as the segment stage enlarges it."""
    columns = []
    net = None
    model_path = run / "train_seg" / "model.pt"
    if model_path.exists():
        from tagseg.stages.segment import segment_image
        from tagseg.stages.train_seg import load_seg_net

        net, _ = load_seg_net(model_path, device)
    for item_id in ids:
        record = dataset.record(item_id)
        image, _ = read_image(record.image_path)
        panels = [("image", image)]
        if record.mask_path:
            panels.append(("ground truth", colorize(read_mask(record.mask_path, dataset.num_classes))))
        for stage, title in (("make_cam", "CAM"), ("perimeterfit", "refined CAM"), ("random_walk", "random walk")):
            path = run / stage / f"{item_id}.npz"
            if path.exists():
                panels.append((title, heatmap(load_score_map(path)[0], image)))
            if stage == "make_cam":
                edges = run / "perimeter_slic" / f"{item_id}.png"
                if edges.exists():
                    panels.append(("perimeter map", np.repeat((read_mask(edges, 2) * 255)[..., None], 3, axis=2)))
        path = run / "boundary_labels" / f"{item_id}.png"
        if path.exists():
            panels.append(("boundary labels", boundary_label_picture(read_mask(path, FOREGROUND + 1))))
        path = run / "boundary_maps" / f"{item_id}.png"
        if path.exists():
            panels.append(("boundary map", np.repeat((read_boundary_map(path) * 255).astype(np.uint8)[..., None], 3,
                                                     axis=2)))
        path = run / "superpixels" / f"{item_id}.png"
        if path.exists():
            panels.append(("superpixels", superpixel_picture(read_label_map(path), image)))
        path = run / "superpixel_seeds" / f"{item_id}.png"
        if path.exists():
            panels.append(("superpixel seeds", colorize(read_mask(path, dataset.num_classes))))
        for stage, title in FOREGROUND_STAGES.items():
            path = run / stage / f"{item_id}.png"
            if path.exists():
                panels.append((title, foreground_picture(read_mask(path, 2))))
        for stage, title in (("affinity_labels", "seeds"), ("pseudo_labels", "pseudo-label")):
            path = run / stage / f"{item_id}.png"
            if path.exists():
                panels.append((title, colorize(read_mask(path, dataset.num_classes))))
        if net is not None:
            panels.append(("prediction", colorize(segment_image(net, image, input_scales((1.0,), image_size), True,
                                                                  device))))
        entry = {"id": item_id, "panels": [], "pictures": dict(panels)}
        for title, picture in panels:
            name = f"{item_id}_{title.replace(' ', '_')}.png"
            write_image(out / "gallery" / name, picture)
            entry["panels"].append((title, f"gallery/{name}"))
        columns.append(entry)
    return columns


OVERVIEW_COLUMNS = ("image", "ground truth", "CAM", "refined saliency", "pseudo-label", "prediction")
OVERVIEW_FILE = "overview.png"


def overview_picture(entries: list[dict], rows: int = 4, cell_width: int = 200,
                     columns: tuple[str, ...] = OVERVIEW_COLUMNS) -> np.ndarray | None:
    """The gallery's first ``rows`` images as one titled picture (the report's ``overview.png``).

    One column per panel in ``columns`` that every shown row has, each picture scaled to ``cell_width``;
    a single file to put in a README or a slide. None when the gallery is empty.
    """
    entries = entries[:rows]
    shown = [c for c in columns if entries and all(c in e["pictures"] for e in entries)]
    if not shown:
        return None
    gap, header = 4, 24
    scaled = [[cv2.resize(e["pictures"][c], (cell_width, max(1, round(e["pictures"][c].shape[0] * cell_width
                                                                          / e["pictures"][c].shape[1]))),
                          interpolation=cv2.INTER_AREA) for c in shown] for e in entries]
    heights = [max(p.shape[0] for p in row) for row in scaled]
    canvas = np.full((header + sum(heights) + gap * len(heights), len(shown) * (cell_width + gap) - gap, 3), 255,
                     np.uint8)
    for j, title in enumerate(shown):
        cv2.putText(canvas, title, (j * (cell_width + gap) + 4, header - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
                    (0, 0, 0), 1, cv2.LINE_AA)
    y = header
    for row, height in zip(scaled, heights):
        for j, picture in enumerate(row):
            x = j * (cell_width + gap)
            canvas[y:y + picture.shape[0], x:x + cell_width] = picture
        y += height + gap
    return canvas


def boundary_summary(run: Path) -> str:
    """BES boundary labels (label shares) and boundary maps (P / R / best F against the masks), when the run has them."""
    lines = []
    labels = (read_manifest(run / "boundary_labels") or {}).get("label_fractions")
    if labels:
        lines.append("<p>Boundary labels: " + ", ".join(f"{name} {_pct(share)}%" for name, share in labels.items())
                     + " of the pixels.</p>")
    scored = (read_manifest(run / "boundary_maps") or {}).get("boundary_metrics")
    if scored and scored.get("threshold") is not None:
        m = scored["metrics"]
        lines.append(f"<p>Boundary maps against the masks' boundaries (within {scored['tolerance']:g} px): precision "
                     f"{_pct(m['precision'])}, recall {_pct(m['recall'])}, best F {_pct(m['f'])} at threshold "
                     f"{scored['threshold']:.2f}.</p>")
    return "<h2>Boundaries</h2>" + "".join(lines) if lines else ""


def saliency_summary(run: Path) -> str:
    """The saliency masks and their refinement (dissertation ch. 2): where the saliency came from, and
    foreground precision / recall / IoU against the masks with every object class as foreground."""
    lines = []
    for stage, title in FOREGROUND_STAGES.items():
        manifest = read_manifest(run / stage)
        if not manifest:
            continue
        source = ((read_manifest(run / "saliency") or {}).get("config") or {}).get("source")
        line = f"<p><b>{title}</b>" + (f" from {html.escape(SALIENCY_SOURCES.get(source, str(source)))}"
                                       if stage == "saliency" else "")
        foreground = ((manifest.get("metrics") or {}).get("per_class") or {}).get("foreground")
        if foreground:
            line += (f": foreground IoU {_pct(foreground['iou'])}, precision {_pct(foreground['precision'])}, "
                     f"recall {_pct(foreground['recall'])} on the pixels it labels; "
                     f"{_pct(manifest.get('unlabelled'))}% unlabelled")
        lines.append(line + ".</p>")
    return "<h2>Saliency</h2>" + "".join(lines) if lines else ""


def superpixel_summary(run: Path) -> str:
    """The superpixels (dissertation ch. 3) and the seeds grown from them, when the run has them."""
    lines = []
    manifest = read_manifest(run / "superpixels")
    if manifest:
        config = manifest.get("config") or {}
        line = f"<p><b>superpixels</b> ({html.escape(str(config.get('method')))}"
        if manifest.get("tau") is not None:
            line += f", {html.escape(str(config.get('features')))} features, tau {manifest['tau']:.3f}"
        line += ")"
        metrics = manifest.get("metrics")
        if metrics:
            line += (f": {metrics['n']:.1f} per image, undersegmentation error {_pct(metrics['ue'])}, achievable "
                     f"accuracy {_pct(metrics['asa'])}, boundary recall {_pct(metrics['br'])} and precision "
                     f"{_pct(metrics['bp'])} (within {manifest.get('tolerance', 2):g} px)")
        lines.append(line + ".</p>")
    quality = (read_manifest(run / "superpixel_seeds") or {}).get("seed_quality")
    if quality:
        lines.append(f"<p><b>seeds</b>: {_pct(quality['labelled_fraction'])}% of the pixels, precision "
                     f"{_pct(quality['precision'])}% (foreground {_pct(quality['foreground_precision'])}%).</p>")
    return "<h2>Superpixels</h2>" + "".join(lines) if lines else ""


def superpixel_picture(labels: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The image with its superpixel boundaries drawn in white."""
    from tagseg.metrics import superpixel_boundaries

    picture = image.copy()
    picture[superpixel_boundaries(labels)] = 255
    return picture


def foreground_picture(mask: np.ndarray) -> np.ndarray:
    """A 0/1/255 foreground mask as RGB: background black, foreground white, unlabelled grey."""
    return np.repeat(np.select([mask == 1, mask == IGNORE_INDEX], [255, 128], 0).astype(np.uint8)[..., None], 3,
                     axis=2)


def alarm_box(manifest: dict) -> str:
    """train_cam's weak-classifier warning as a boxed paragraph (empty when the alarm did not fire)."""
    alarm = manifest.get("alarm") or {}
    if not alarm.get("fired"):
        return ""
    lines = finding_lines(alarm, (manifest.get("classification") or {}).get("split"))
    return ('<div class="alarm"><b>Warning: weak classifier (train_cam)</b><ul>'
            + "".join(f"<li>{html.escape(line)}</li>" for line in lines)
            + f"</ul><p>{html.escape(advice())}</p></div>")


def classifier_table(manifest: dict) -> str:
    """Per-class AP of the classifier, with the held-out and training images each AP rests on."""
    classification = manifest.get("classification")
    if not classification:
        return ""
    source = ("a tag-only hold-out of the training split" if classification.get("source") == "holdout"
              else "the eval split")
    positives = classification.get("positives", {})
    train_images = manifest.get("train_images_per_class", {})
    flagged = set((manifest.get("alarm") or {}).get("classes", []))
    rows = "".join(
        f"{'<tr class=flagged>' if name in flagged else '<tr>'}<td>{html.escape(name)}</td><td>{_pct(ap)}</td>"
        f"<td>{positives.get(name, '-')}</td><td>{train_images.get(name, '-')}</td></tr>"
        for name, ap in classification["per_class"].items())
    return (f"<h2>Classifier</h2><p>mAP {_pct(classification['map'])} on {html.escape(str(classification['split']))} "
            f"tags ({source}).</p><table><tr><th>class</th><th>AP</th><th>held-out images</th>"
            f"<th>training images</th></tr>{rows}</table>")


def final_miou(run: Path) -> tuple[str | None, float | None]:
    """The segmentation stage's mIoU (the last stage a recipe runs), if any."""
    for directory in sorted(run.glob("segment_*")):
        manifest = read_manifest(directory) or {}
        if manifest.get("metrics"):
            return directory.name, manifest["metrics"]["miou"]
    return None, None


def write_report(run: Path, upper_bound: Path | None = None, gallery_size: int = 8, device: str = "cpu",
                 dataset_root: Path | None = None, split: str | None = None) -> Path:
    """Write ``<run>/report/index.html`` and its images; returns the page's path.

    The gallery's dataset comes from ``dataset_root`` or the run's recipe (none: no gallery).
    """
    run = Path(run)
    out = run / REPORT_DIR
    pipeline = json.loads((run / PIPELINE_FILE).read_text()) if (run / PIPELINE_FILE).exists() else {}
    recipe = pipeline.get("recipe", {})
    if upper_bound is None and recipe.get("upper_bound_run"):
        upper_bound = Path(recipe["upper_bound_run"])
    rows = stage_rows(run)
    classifier = read_manifest(run / "train_cam") or {}
    final_stage, final = final_miou(run)
    upper_stage, upper = final_miou(upper_bound) if upper_bound is not None else (None, None)
    body = [f"<h1>TagSeg run {html.escape(str(run))}</h1>"]
    points = progression(rows)
    if points:
        body.append("<h2>Stage progression</h2><p>mIoU of each stage's output against the masks, at the oracle "
                    "threshold (read from the masks) and at the label-free one the run can use without them; the "
                    "network is scored on the held-out split, the stages before it on the training images.</p>"
                    + progression_svg(points, upper))
    body.append(alarm_box(classifier))
    if final is not None:
        line = f"<p><b>Final ({final_stage}) mIoU: {_pct(final)}</b>"
        if upper:
            line += (f"; fully supervised upper bound ({html.escape(str(upper_bound))}, {upper_stage}): "
                     f"{_pct(upper)}; ratio <b>{final / upper:.1%}</b>")
        body.append(line + "</p>")
    if pipeline.get("stages"):
        body.append("<h2>Stages</h2><table><tr><th>stage</th><th>status</th><th>seconds</th></tr>")
        for name, entry in pipeline["stages"].items():
            body.append(f"<tr><td>{name}</td><td>{entry.get('status')}</td><td>{entry.get('seconds', '-')}</td></tr>")
        total = sum(entry.get("seconds") or 0 for entry in pipeline["stages"].values())
        body.append(f"<tr><th>total</th><td></td><th>{total:.1f}</th></tr></table>")
    body.append("<h2>Metrics</h2><table><tr><th>stage</th><th>mIoU (oracle t)</th><th>mFP / mFN</th>"
                "<th>mIoU (label-free t)</th><th>mFP / mFN (label-free)</th><th>other</th></tr>")
    for row in rows:
        m, free = row["metrics"], row["label_free"]
        free_metrics = free.get("metrics") or {}
        oracle = f"{_pct(m.get('miou'))}" + (f" ({row['threshold']:.2f})" if row["threshold"] is not None else "")
        label_free = (f"{_pct(free_metrics.get('miou'))} ({free['threshold']:.2f}, {free.get('method', 'otsu')})"
                      if free_metrics else "-")
        other = f"classifier mAP {_pct(row['classification']['map'])}" if row["classification"] else ""
        if row["manifest"].get("seed_quality"):
            quality = row["manifest"]["seed_quality"]
            other = f"seed precision {_pct(quality['precision'])}%, labelled {_pct(quality['labelled_fraction'])}%"
        body.append(f"<tr><td>{row['stage']}</td><td>{oracle}</td><td>{_ratio(m.get('mfp'))} / {_ratio(m.get('mfn'))}"
                    f"</td><td>{label_free}</td><td>{_ratio(free_metrics.get('mfp'))} / "
                    f"{_ratio(free_metrics.get('mfn'))}</td><td>{other}</td></tr>")
    body.append("</table>")
    body.append(boundary_summary(run))
    body.append(saliency_summary(run))
    body.append(superpixel_summary(run))
    body.append(classifier_table(classifier))
    scored = [r for r in rows if r["metrics"].get("per_class")]
    if scored:
        classes = list(scored[0]["metrics"]["per_class"])
        body.append("<h2>Per-class IoU</h2><table><tr><th>class</th>"
                    + "".join(f"<th>{r['stage']}</th>" for r in scored) + "</tr>")
        for name in classes:
            cells = "".join(f"<td>{_pct(r['metrics']['per_class'].get(name, {}).get('iou'))}</td>" for r in scored)
            body.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
        body.append("</table>" + per_class_svg(scored, classes))
    curves = [r for r in rows if r["curve"]]
    if curves:
        body.append("<h2>Threshold curves</h2><p>mIoU (blue), mFP (red) and mFN (grey) against the background "
                    "threshold.</p><div>")
        body += [f"<figure><figcaption>{r['stage']}</figcaption>{curve_svg(r['curve'])}</figure>" for r in curves]
        body.append("</div>")
    skipped = skipped_in_run(run)
    if skipped:
        body.append(f"<h2>Skipped images</h2><p>{len(skipped)} image(s) could not be read and were left out "
                    "(<code>on_error: skip</code>): no output for them, and the metrics above cover the other "
                    "images.</p><table><tr><th>image</th><th>reason</th><th>left out of</th></tr>")
        for item, entry in skipped.items():
            body.append(f"<tr><td>{html.escape(item)}</td><td>{html.escape(entry['reason'])}</td>"
                        f"<td>{', '.join(entry['stages'])}</td></tr>")
        body.append("</table>")
    dataset_root = dataset_root or recipe.get("dataset")
    if dataset_root:
        dataset = open_dataset(dataset_root, split or recipe.get("train_split", "train")).leave_out(
            {item: entry["reason"] for item, entry in skipped.items()})
        ids = [r.id for r in dataset.records if r.mask_path][:gallery_size] or dataset.ids[:gallery_size]
        body.append("<h2>Gallery (training images)</h2>" + class_legend(dataset.class_names) + "<table>")
        entries = gallery(run, dataset, ids, out, device, pipeline.get("image_size")
                          or resolve_image_size("auto", dataset))
        picture = overview_picture(entries)
        if picture is not None:
            write_image(out / OVERVIEW_FILE, picture)
        for entry in entries:
            body.append("<tr>" + "".join(f'<td><img src="{src}" alt="{title}" width="200"><br>{title}</td>'
                                         for title, src in entry["panels"]) + f"<td>{entry['id']}</td></tr>")
        body.append("</table>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>TagSeg report</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
            "td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}figure{display:inline-block}"
            ".alarm{border:3px solid #c00;background:#fff0f0;padding:0.5em 1em;margin:1em 0}"
            "tr.flagged td{background:#fff0f0}.legend .swatch{margin-right:1em;white-space:nowrap}"
            ".legend .swatch span{display:inline-block;width:14px;height:14px;margin-right:4px;"
            "vertical-align:middle;border:1px solid #999}"
            "</style></head><body>" + "\n".join(body) + "</body></html>\n")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "index.html", page)
    return out / "index.html"
