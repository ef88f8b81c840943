"""The ``tagseg`` command: one entry point, a sub-command per task or stage."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from tagseg import __version__
from tagseg.errors import OnError, TagsegError
from tagseg.progress import console
from tagseg.rundir import read_manifest
from tagseg.runtime import log_to_run, setup_logging

app = typer.Typer(help="TagSeg: semantic segmentation from image-level tags.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Inspect and generate datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
out = console  # tables and summaries go to stderr with the progress bars; JSON files carry the data

Workers = Annotated[int, typer.Option("--workers", "-j", min=1, help="Parallel worker threads.")]
Force = Annotated[bool, typer.Option("--force", help="Recompute even if the output was made with another config.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML file with the stage config.")]
Overrides = Annotated[Optional[list[str]], typer.Option("--set", help="Override one config key: KEY=VALUE.")]
OnErrorOption = Annotated[OnError, typer.Option(
    "--on-error", help="An unreadable image: stop (name it and stop) or skip (name it, leave it out, go on).")]


def _fmt(value, scale: float = 100.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


@app.callback(invoke_without_command=True)
def _root(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
          log_level: Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
          threads: Annotated[Optional[int], typer.Option(
              "--threads", min=1, envvar="TAGSEG_THREADS",
              help="CPU threads this command may use in all (torch, OpenCV, worker pools); default: every "
                   "available core. Give each of several runs on one machine its share.")] = None,
          ) -> None:
    from tagseg.threads import set_threads

    set_threads(threads)
    if version:
        typer.echo(f"tagseg {__version__}")
        raise typer.Exit()
    from tagseg.distributed import launched

    if launched() and os.environ.get("RANK", "0") != "0" and log_level.upper() in ("DEBUG", "INFO"):
        log_level = "WARNING"  # one process of a torchrun group reports; the others only warn
    setup_logging(log_level)


@data_app.command("check")
def data_check(
    path: Annotated[Path, typer.Argument(help="Dataset root (VOC layout, COCO layout or images/ + tags CSV).")],
    split: Annotated[Optional[list[str]], typer.Option("--split", help="Split(s) to check; default: all.")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON.")] = None,
    workers: Workers = 2,
) -> None:
    """Report splits, classes, per-class image counts and every bad file; exit 1 on errors."""
    from tagseg.data.check import check_dataset
    from tagseg.data.dataset import list_splits, open_dataset

    splits = split or list_splits(path) or [None]
    datasets = [open_dataset(path, s, strict=False) for s in splits]
    report = check_dataset(datasets, workers)

    summary = Table(title=f"{path} ({report.format} layout)", show_header=False)
    summary.add_row("classes", f"{len(report.class_names)} (background + {len(report.class_names) - 1})")
    for name, size in report.split_sizes.items():
        summary.add_row(f"{name} images", str(size))
    summary.add_row("errors", str(len(report.errors)))
    summary.add_row("warnings", str(len(report.warnings)))
    out.print(summary)
    counts = Table(title="images per class")
    counts.add_column("class")
    for name in report.class_counts:
        counts.add_column(name, justify="right")
    for class_name in report.class_names[1:]:
        counts.add_row(class_name, *(str(report.class_counts[s][class_name]) for s in report.class_counts))
    out.print(counts)
    for (level, kind), count in sorted(report.counts_by_kind().items()):
        out.print(f"{level}: {kind}: {count}")
    for problem in report.errors:
        out.print(f"[red]error[/red] {problem}", markup=True, highlight=False)
    for problem in report.warnings[:20]:
        out.print(f"[yellow]warning[/yellow] {problem}", markup=True, highlight=False)
    if len(report.warnings) > 20:
        out.print(f"... and {len(report.warnings) - 20} more warnings" + (" (see --json)" if not json_path else ""))
    if json_path:
        json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    if report.errors:
        raise typer.Exit(1)
    out.print("[green]no errors[/green]")


@data_app.command("synth")
def data_synth(
    out_dir: Annotated[Path, typer.Argument(help="Where to write the dataset (VOC layout).")],
    count: Annotated[int, typer.Option(min=2, help="Number of images.")] = 200,
    width: Annotated[int, typer.Option(min=32, help="Image width.")] = 160,
    height: Annotated[int, typer.Option(min=32, help="Image height.")] = 120,
    val_fraction: Annotated[float, typer.Option(min=0.01, max=0.99, help="Share of images in val.")] = 0.25,
    max_objects: Annotated[int, typer.Option(min=1, help="Most objects per image.")] = 3,
    object_size: Annotated[tuple[float, float], typer.Option(
        help="Smallest and largest object, as fractions of the short image side.")] = (0.15, 0.45),
    seed: Seed = 0,
    workers: Workers = 2,
    force: Force = False,
) -> None:
    """Generate the procedural synthetic dataset (known masks; resumable; deterministic from --seed)."""
    from tagseg.data.make_synthetic import write_synthetic_dataset

    summary = write_synthetic_dataset(out_dir, count, seed, (width, height), val_fraction, max_objects,
                                      object_size, workers=workers, force=force)
    out.print(f"{out_dir}: {summary['images']} images ({summary['generated_now']} generated now), "
              f"splits {summary['splits']}")


def _parse_thresholds(text: str) -> tuple[float, ...]:
    try:
        start, stop, step = (float(v) for v in text.split(":"))
    except ValueError:
        raise typer.BadParameter("use START:STOP:STEP, e.g. 0:1:0.01") from None
    if step <= 0 or stop <= start:
        raise typer.BadParameter("need STOP > START and STEP > 0")
    import numpy as np

    return tuple(round(float(t), 6) for t in np.arange(start, stop, step))


@app.command("eval")
def eval_command(
    prediction: Annotated[Path, typer.Argument(
        help="Folder of <id>.png masks, <id>.npz score maps, <id>.png boundary maps or superpixel maps.")],
    truth: Annotated[Path, typer.Argument(help="Dataset root, or a folder of ground-truth PNG masks.")],
    split: Annotated[Optional[str], typer.Option(help="Dataset split to score (default: all with masks).")] = None,
    classes: Annotated[Optional[Path], typer.Option(help="Class names file, for a plain mask folder.")] = None,
    thresholds: Annotated[Optional[str], typer.Option(
        help="Threshold grid, START:STOP:STEP: background threshold of score maps (default 0:1:0.01), "
             "boundary threshold of boundary maps (default 0.01:1:0.01).")] = None,
    boundary: Annotated[bool, typer.Option(
        "--boundary", help="Score the PNGs as class-agnostic boundary maps (8-bit gray, value / 255); "
                           "automatic for a boundary_maps stage folder.")] = False,
    superpixels: Annotated[bool, typer.Option(
        "--superpixels", help="Score the PNGs as superpixel label maps (UE, ASA, BR, BP, n); automatic for a "
                              "superpixels stage folder.")] = False,
    tolerance: Annotated[float, typer.Option(
        min=0, help="Boundary and superpixel maps: how far (px) a predicted boundary pixel may lie from the "
                    "true one.")] = 2.0,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Where to write the JSON result.")] = None,
    workers: Workers = 2,
) -> None:
    """mIoU, per-class IoU / precision / recall, pixel accuracy, mFP / mFN (SILOP eq. 3); for
    boundary maps, boundary precision / recall and the best F-measure; for superpixel maps,
    undersegmentation error, achievable segmentation accuracy, boundary recall / precision and
    the mean count, averaged per image (void excluded).

    Score maps without background, and boundary maps, are scored at every threshold of the grid;
    the best one is reported with the whole curve in the JSON.
    """
    from tagseg.data.dataset import open_dataset
    from tagseg.evaluate import GroundTruth, evaluate
    from tagseg.rundir import MANIFEST

    if (truth / "JPEGImages").is_dir() or (truth / "images").is_dir():
        ground_truth = GroundTruth.from_dataset(open_dataset(truth, split))
    else:
        ground_truth = GroundTruth.from_folder(truth, classes)
    grid = None if thresholds is None else _parse_thresholds(thresholds)
    result = evaluate(prediction, ground_truth, workers, grid, boundary, tolerance, superpixels)
    if result["kind"] == "superpixels":
        metrics = result["metrics"]
        out.print(f"superpixels: n {metrics['n']:.1f}  UE {_fmt(metrics['ue'])}  ASA {_fmt(metrics['asa'])}  "
                  f"BR {_fmt(metrics['br'])}  BP {_fmt(metrics['bp'])} (within {result['tolerance']:g} px)  "
                  f"images {result['num_images']}")
    elif result["kind"] == "boundaries":
        metrics = result["metrics"]
        threshold = "-" if result["threshold"] is None else f"{result['threshold']:.2f}"
        out.print(f"boundaries within {result['tolerance']:g} px: precision {_fmt(metrics['precision'])}  "
                  f"recall {_fmt(metrics['recall'])}  best F {_fmt(metrics['f'])} at threshold {threshold}  "
                  f"images {result['num_images']}")
    else:
        _print_segmentation_scores(prediction, ground_truth, result)
    if result.get("skipped"):
        out.print(f"left out {len(result['skipped'])} image(s) the stage skipped: {', '.join(result['skipped'])}")
    if json_path is None:
        in_run = (prediction / MANIFEST).exists()
        json_path = prediction / f"eval_{split or 'all'}.json" if in_run else Path(f"eval_{prediction.name}.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.print(f"wrote {json_path}")


def _print_segmentation_scores(prediction: Path, ground_truth, result: dict) -> None:
    metrics = result["metrics"]
    table = Table(title=f"{prediction} vs {ground_truth.source}")
    for column in ("class", "IoU", "precision", "recall", "FP/TP", "FN/TP"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, row in metrics["per_class"].items():
        table.add_row(name, _fmt(row["iou"]), _fmt(row["precision"]), _fmt(row["recall"]),
                      _fmt(row["fp_over_tp"], 1, 3), _fmt(row["fn_over_tp"], 1, 3))
    out.print(table)
    threshold = "" if result["threshold"] is None else f"  (background threshold {result['threshold']:.2f})"
    out.print(f"mIoU {_fmt(metrics['miou'])}  pixel accuracy {_fmt(metrics['pixel_accuracy'])}  "
              f"mFP {_fmt(metrics['mfp'], 1, 3)}  mFN {_fmt(metrics['mfn'], 1, 3)}  "
              f"images {result['num_images']}{threshold}")


@app.command("prior")
def prior_command(
    dataset_path: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset root.")],
    run: Annotated[Path, typer.Argument(help="Run directory; writes RUN/prior/.")],
    split: Annotated[str, typer.Option(help="Split to process.")] = "train",
    sigma: Annotated[float, typer.Option(help="Gaussian width as a fraction of the image side.")] = 0.3,
    workers: Workers = 2,
    force: Force = False,
    on_error: OnErrorOption = "stop",
) -> None:
    """Tags-only baseline: a centred Gaussian score map per tagged class (the floor to beat)."""
    from tagseg.stages.prior import PriorConfig, run_prior

    log_to_run(run)
    dataset, _ = _stage_datasets(dataset_path, split, on_error, workers)
    manifest = run_prior(dataset, run, PriorConfig(sigma=sigma), force=force, workers=workers)
    metrics = manifest.get("metrics")
    if metrics:
        out.print(f"prior: mIoU {_fmt(metrics['miou'])} at background threshold {manifest['threshold']:.2f}")


def _stage_datasets(dataset_path: Path, split: str, on_error: OnError, workers: int,
                    eval_split: Optional[str] = None, device: str = "auto"):
    """The split (and held-out split) a stage command works on; with skip, without unreadable images.
    Under torchrun this process first joins the group (nccl when ``device`` is a GPU, else gloo), so the
    stage trains one model with the others or takes its share of the images."""
    from tagseg.data.dataset import open_dataset
    from tagseg.distributed import init_from_env
    from tagseg.runtime import resolve_device
    from tagseg.skipping import readable_only

    init_from_env(resolve_device(device))

    datasets = [open_dataset(dataset_path, name) for name in (split, eval_split) if name]
    for kind, count in datasets[0].warning_counts().items():
        logging.getLogger("tagseg").warning("%s: %d image(s) (run `tagseg data check` for the list)", kind, count)
    if on_error == "skip":
        datasets = [readable_only(dataset, workers) for dataset in datasets]
    return datasets[0], datasets[1] if eval_split else None


def _print_cam_scores(stage: str, manifest: dict) -> None:
    if manifest.get("metrics"):
        free = manifest["label_free"]
        out.print(f"{stage}: mIoU {_fmt(manifest['metrics']['miou'])} at the oracle background threshold "
                  f"{manifest['threshold']:.2f}; {_fmt(free['metrics']['miou'])} at the label-free threshold "
                  f"{free['threshold']:.3f} ({free.get('method', 'otsu')})")
    elif manifest.get("label_free"):
        free = manifest["label_free"]
        out.print(f"{stage}: label-free background threshold {free['threshold']:.3f} ({free.get('method', 'otsu')})")


def _print_alarm(manifest: dict, dataset_path: Path | str | None = None) -> None:
    """The weak-classifier alarm of a train_cam manifest, as a red box (nothing when it did not fire)."""
    from rich.panel import Panel
    from rich.text import Text

    from tagseg.classifier_check import advice, finding_lines

    alarm = manifest.get("alarm") or {}
    if not alarm.get("fired"):
        return
    lines = finding_lines(alarm, (manifest.get("classification") or {}).get("split"))
    text = Text("\n".join(f"- {line}" for line in lines) + "\n\n" + advice(str(dataset_path) if dataset_path else None))
    out.print(Panel(text, title="WARNING: weak classifier (train_cam)", border_style="red", expand=False))


@app.command("train-cam")
def train_cam_command(
    dataset_path: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset root.")],
    run: Annotated[Path, typer.Argument(help="Run directory; writes RUN/train_cam/.")],
    config: ConfigFile = None,
    overrides: Overrides = None,
    split: Annotated[str, typer.Option(help="Split whose tags train the classifier.")] = "train",
    eval_split: Annotated[Optional[str], typer.Option(help="Split whose tags score the classifier (mAP); "
                                                           "'none' to skip.")] = "val",
    device: Device = "auto",
    workers: Workers = 2,
    force: Force = False,
    on_error: OnErrorOption = "stop",
) -> None:
    """Train the multi-label classifier from tags (CAM, Puzzle-CAM, attention pooling, dilated blocks or SEAM).

    Keys (set in --config YAML or with --set): backbone, weights, head (cam|puzzle|attention|dilated|seam),
    epochs (5), min_steps (200), steps (null: epochs passes, at least min_steps), batch_size, crop_size, scale_range,
    optimizer (sgd|adamw), lr, head_lr_multiplier,
    momentum, weight_decay, freeze_bn, puzzle_alpha, attention_intensity, dilations, lambda_cls,
    dense_at_inference, seam_scale (0.3), seam_top_fraction (0.2), init (a trained model.pt to fine-tune),
    smoothing.boundaries (an earlier run's label PNGs: turns on the structure-aware smoothing branch, any
    head), smoothing.lambda_boundary (0.05), smoothing.lambda_smooth (1.0), smoothing.alpha (10),
    smoothing.lambda_s (10), smoothing.lambda_s_on (second|first), smoothing.canny ([100, 200]),
    smoothing.channels (32), seed, holdout_fraction (0.1: without an eval split, that share of each class's
    images is held out of training to measure mAP), alarm.min_map (0.7), alarm.min_class_ap (0.5),
    alarm.min_images (10): below these the run warns that the classifier is weak. A checkpoint is
    written every epoch; rerunning resumes.
    """
    from tagseg.config import load_config
    from tagseg.data.dataset import list_splits
    from tagseg.runtime import resolve_device
    from tagseg.stages.train_cam import CamTrainConfig, train_cam

    settings = load_config(CamTrainConfig, config, overrides)
    log_to_run(run)
    if eval_split not in list_splits(dataset_path):
        if eval_split != "none":
            logging.getLogger("tagseg").info("no split %r: the classifier's mAP is not measured", eval_split)
        eval_split = None
    dataset, held_out = _stage_datasets(dataset_path, split, on_error, workers, eval_split, device=device)
    manifest = train_cam(dataset, run, settings, device=resolve_device(device), workers=workers,
                         eval_dataset=held_out, force=force)
    if manifest.get("classification"):
        out.print(f"train_cam: mAP {_fmt(manifest['classification']['map'])} on "
                  f"{manifest['classification']['split']} tags")
    _print_alarm(manifest, dataset_path)


@app.command("make-cam")
def make_cam_command(
    dataset_path: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset root.")],
    run: Annotated[Path, typer.Argument(help="Run directory with a trained RUN/train_cam/; writes RUN/make_cam/.")],
    config: ConfigFile = None,
    overrides: Overrides = None,
    split: Annotated[str, typer.Option(help="Split to make CAMs for.")] = "train",
    device: Device = "auto",
    workers: Workers = 2,
    force: Force = False,
    on_error: OnErrorOption = "stop",
) -> None:
    """Multi-scale + flip CAMs of the tagged classes, scored at the oracle and label-free thresholds.

    Keys: scales (default [0.5, 1, 1.5, 2], for a 320 px photo), flip (true), reduce (sum | max: how the
    scales' CAMs combine; max is the dissertation's eq. 2.4), batch_size (images of one size per pass),
    image_size (auto: the split's median long side; scales are converted for it), label_free (masking).
    """
    from tagseg.config import load_config
    from tagseg.runtime import resolve_device
    from tagseg.stages.make_cam import STAGE, MakeCamConfig, make_cams

    settings = load_config(MakeCamConfig, config, overrides)
    log_to_run(run)
    dataset, _ = _stage_datasets(dataset_path, split, on_error, workers, device=device)
    _print_cam_scores(STAGE, make_cams(dataset, run, settings, device=resolve_device(device), workers=workers,
                                       force=force))


@app.command("perimeter")
def perimeter_command(
    dataset_path: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset root.")],
    run: Annotated[Path, typer.Argument(help="Run directory; writes RUN/perimeter_slic/ and "
                                             "RUN/perimeter_quickshift/.")],
    config: ConfigFile = None,
    overrides: Overrides = None,
    split: Annotated[str, typer.Option(help="Split to draw perimeter maps for.")] = "train",
    device: Device = "auto",
    workers: Workers = 2,
    force: Force = False,
    on_error: OnErrorOption = "stop",
) -> None:
    """Perimeter maps (SILOP step B): USS-simplified images, then Canny edges, one PNG per image.

    Keys: variants ([slic, quickshift]), max_side (160; null = full size), clusters (q, 32),
    iterations (64), lr (0.05), min_clusters (20), layers (2), seed, slic_segments (1000),
    slic_compactness (15), quickshift_kernel (3), quickshift_max_dist (6), quickshift_ratio (0.29),
    canny_sigma (1.0), canny_low (50), canny_high (100), batch_size (1).
    """
    from tagseg.config import load_config
    from tagseg.runtime import resolve_device
    from tagseg.stages.perimeter import PerimeterConfig, perimeter_maps

    settings = load_config(PerimeterConfig, config, overrides)
    log_to_run(run)
    dataset, _ = _stage_datasets(dataset_path, split, on_error, workers, device=device)
    manifests = perimeter_maps(dataset, run, settings, device=resolve_device(device), workers=workers, force=force)
    for variant, manifest in manifests.items():
        timing = manifest.get("seconds_per_image", {})
        out.print(f"perimeter_{variant}: {len(dataset)} maps; seconds per image: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in timing.items()))


@app.command("perimeterfit")
def perimeterfit_command(
    dataset_path: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset root.")],
    run: Annotated[Path, typer.Argument(help="Run directory with RUN/make_cam/; writes RUN/perimeterfit/.")],
    config: ConfigFile = None,
    overrides: Overrides = None,
    split: Annotated[str, typer.Option(help="Split to refine.")] = "train",
    device: Device = "auto",
    workers: Workers = 2,
    force: Force = False,
    on_error: OnErrorOption = "stop",
) -> None:
    """PerimeterFit (SILOP step C): drop CAM positives outside USS perimeters; draws the maps first if needed.

    Keys: cams (source stage, make_cam), combination (silop: cam * mask_slic * mask_quickshift + cam,
    halved; product: cam * masks), thresholds ({slic: t, quickshift: t}; default: searched),
    search (grid on the training masks, or label_free: the CAM's Otsu threshold), grid
    (0.10 .. 0.50), and perimeter.* (every `tagseg perimeter` key, e.g. perimeter.max_side=null).
    """
    from tagseg.config import load_config
    from tagseg.runtime import resolve_device
    from tagseg.stages.perimeterfit import STAGE, PerimeterFitConfig, perimeterfit

    settings = load_config(PerimeterFitConfig, config, overrides)
    log_to_run(run)
    dataset, _ = _stage_datasets(dataset_path, split, on_error, workers, device=device)
    manifest = perimeterfit(dataset, run, settings, device=resolve_device(device), workers=workers, force=force)
    out.print(f"{STAGE}: thresholds {manifest['thresholds']} ({manifest['threshold_choice']})")
    _print_cam_scores(STAGE, manifest)


@app.command("affinity-labels")
def affinity_labels_command(
    dataset_path: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset root.")],
    run: Annotated[Path, typer.Argument(help="Run directory with a score stage; writes RUN/affinity_labels/.")],
    config: ConfigFile = None,
    overrides: Overrides = None,
    split: Annotated[str, typer.Option(help="Split to label.")] = "train",
    workers: Workers = 2,
    force: Force = False,
    on_error: OnErrorOption = "stop",
) -> None:
    """Seed labels for affinity training: confident class / background pixels, the rest ignored (255).

    Keys: cams (source stage: make_cam or perimeterfit), fg_threshold (default: the source's
    label-free threshold), bg_threshold (default: a third of the way from the source maps' floor, where
    their lowest 1% of pixels end, to fg_threshold: fg_threshold / 3 for CAMs), crf (true), crf_settings.*
    (gaussian_sxy 3, gaussian_compat 3, bilateral_sxy 32, bilateral_srgb 5, bilateral_compat 10, iterations 10;
    widths in pixels of a 320 px photo), image_size (auto: the split's median long side).
    """
    from tagseg.config import load_config
    from tagseg.stages.affinity_labels import STAGE, AffinityLabelsConfig, make_affinity_labels

    settings = load_config(AffinityLabelsConfig, config, overrides)
    log_to_run(run)
    dataset, _ = _stage_datasets(dataset_path, split, on_error, workers)
    manifest = make_affinity_labels(dataset, run, settings, workers=workers, force=force)
    line = f"{STAGE}: fg > {manifest['fg_threshold']:.3f}, background <= {manifest['bg_threshold']:.3f}"
    if manifest.get("seed_quality"):
        quality = manifest["seed_quality"]
        line += (f"; {_fmt(quality['labelled_fraction'])}% of pixels labelled, precision "
                 f"{_fmt(quality['precision'])}% (foreground {_fmt(quality['foreground_precision'])}%)")
    out.print(line)


@app.command("boundary-labels")
def boundary_labels_command(
    dataset_path: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset root.")],
    run: Annotated[Path, typer.Argument(help="Run directory with a score stage; writes RUN/boundary_labels/.")],
    config: ConfigFile = None,
    overrides: Overrides = None,
    split: Annotated[str, typer.Option(help="Split to label.")] = "train",
    workers: Workers = 2,
    force: Force = False,
    on_error: OnErrorOption = "stop",
) -> None:
    """BES boundary labels (eq. 1-3): 0 background, 1 boundary, 2 foreground, 255 ignored.

    Keys: cams (source stage: make_cam or perimeterfit), fg_threshold (default: the source's
    label-free threshold), bg_threshold (default: 0.07 / 0.30 of the way from the source maps' floor to
    fg_threshold, as for affinity-labels), crf (true),
    crf_settings.* (as for affinity-labels), window (8.3 px of a 320 px photo: 13 px on a 500 px one;
    never below the smallest odd width over 1 / theta_diff, 11 px at 0.10),
    theta_scale (0.35), theta_diff (0.10), between_foregrounds (false), image_size (auto).
    """
    from tagseg.config import load_config
    from tagseg.stages.boundary_labels import STAGE, BoundaryLabelsConfig, make_boundary_labels

    settings = load_config(BoundaryLabelsConfig, config, overrides)
    log_to_run(run)
    dataset, _ = _stage_datasets(dataset_path, split, on_error, workers)
    manifest = make_boundary_labels(dataset, run, settings, workers=workers, force=force)
    shares = manifest["label_fractions"]
    out.print(f"{STAGE}: window {manifest['window_pixels']} px, fg > {manifest['fg_threshold']:.3f}, background "
              f"<= {manifest['bg_threshold']:.3f}; pixels: boundary {_fmt(shares['boundary'])}%, foreground "
              f"{_fmt(shares['foreground'])}%, background {_fmt(shares['background'])}%, ignored "
              f"{_fmt(shares['ignored'])}%")


@app.command("train-affinity")
def train_affinity_command(
    dataset_path: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset root.")],
    run: Annotated[Path, typer.Argument(help="Run directory with RUN/affinity_labels/; writes RUN/train_affinity/.")],
    config: ConfigFile = None,
    overrides: Overrides = None,
    split: Annotated[str, typer.Option(help="Split to train on.")] = "train",
    device: Device = "auto",
    workers: Workers = 2,
    force: Force = False,
    on_error: OnErrorOption = "stop",
) -> None:
    """Train an affinity network on seed or boundary labels (backbone frozen; resumable per epoch).

    Keys: kind (boundary: IRN boundary map; affinitynet: PSA embedding; benet: BES boundary map trained
    on RUN/boundary_labels/), labels (the label stage; default by kind), backbone, weights, freeze_backbone
    (true), radius (5), epochs (3), min_steps (120), steps (null), batch_size (8), crop_size (320),
    scale_range ([0.7, 1.3]), optimizer (sgd), lr (0.1), momentum, weight_decay, seed.
    """
    from tagseg.config import load_config
    from tagseg.runtime import resolve_device
    from tagseg.stages.train_affinity import STAGE, AffinityTrainConfig, train_affinity

    settings = load_config(AffinityTrainConfig, config, overrides)
    log_to_run(run)
    dataset, _ = _stage_datasets(dataset_path, split, on_error, workers, device=device)
    manifest = train_affinity(dataset, run, settings, device=resolve_device(device), workers=workers, force=force)
    out.print(f"{STAGE}: {settings.kind}, {manifest['steps']} steps in {len(manifest['history'])} passes, final "
              f"loss {manifest['history'][-1]['loss']:.4f}, {manifest['seconds_per_epoch']:.0f} s per pass")


@app.command("random-walk")
def random_walk_command(
    dataset_path: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset root.")],
    run: Annotated[Path, typer.Argument(help="Run directory with RUN/train_affinity/; writes RUN/random_walk/.")],
    config: ConfigFile = None,
    overrides: Overrides = None,
    split: Annotated[str, typer.Option(help="Split to propagate.")] = "train",
    device: Device = "auto",
    workers: Workers = 2,
    force: Force = False,
    on_error: OnErrorOption = "stop",
) -> None:
    """Propagate scores over the learned affinities (sparse random walk), scored like make-cam.

    Keys: cams (source stage: make_cam or perimeterfit), beta (10), logt (8: 256 steps), radius (5), flip (true),
    image_size (auto; the affinity net sees the image rescaled by 320 / image_size).
    """
    from tagseg.config import load_config
    from tagseg.runtime import resolve_device
    from tagseg.stages.random_walk import STAGE, RandomWalkConfig, random_walk_stage

    settings = load_config(RandomWalkConfig, config, overrides)
    log_to_run(run)
    dataset, _ = _stage_datasets(dataset_path, split, on_error, workers, device=device)
    _print_cam_scores(STAGE, random_walk_stage(dataset, run, settings, device=resolve_device(device),
                                               workers=workers, force=force))


@app.command("boundary-maps")
def boundary_maps_command(
    dataset_path: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset root.")],
    run: Annotated[Path, typer.Argument(help="Run directory with a boundary net in RUN/train_affinity/; "
                                             "writes RUN/boundary_maps/.")],
    config: ConfigFile = None,
    overrides: Overrides = None,
    split: Annotated[str, typer.Option(help="Split to process.")] = "train",
    device: Device = "auto",
    workers: Workers = 2,
    force: Force = False,
    on_error: OnErrorOption = "stop",
) -> None:
    """Write the boundary net's map of every image (8-bit PNG) and score it against the masks' boundaries.

    Keys: flip (true), image_size (auto), tolerance (2 px, scoring only).
    """
    from tagseg.config import load_config
    from tagseg.runtime import resolve_device
    from tagseg.stages.boundary_maps import STAGE, BoundaryMapsConfig, make_boundary_maps

    settings = load_config(BoundaryMapsConfig, config, overrides)
    log_to_run(run)
    dataset, _ = _stage_datasets(dataset_path, split, on_error, workers, device=device)
    manifest = make_boundary_maps(dataset, run, settings, device=resolve_device(device), workers=workers,
                                  force=force)
    scored = manifest.get("boundary_metrics")
    if scored and scored["threshold"] is not None:
        metrics = scored["metrics"]
        out.print(f"{STAGE}: best F {_fmt(metrics['f'])} (precision {_fmt(metrics['precision'])}, recall "
                  f"{_fmt(metrics['recall'])}) at threshold {scored['threshold']:.2f}, tolerance "
                  f"{settings.tolerance:g} px, {scored['num_images']} images")
    else:
        out.print(f"{STAGE}: wrote {manifest['items_computed']} maps (no masks to score them)")


@app.command("pseudo-labels")
def pseudo_labels_command(
    dataset_path: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset root.")],
    run: Annotated[Path, typer.Argument(help="Run directory with a score stage; writes RUN/pseudo_labels/.")],
    config: ConfigFile = None,
    overrides: Overrides = None,
    split: Annotated[str, typer.Option(help="Split to label.")] = "train",
    workers: Workers = 2,
    force: Force = False,
    on_error: OnErrorOption = "stop",
) -> None:
    """Final pseudo-label masks (palette PNGs) from a score stage, with an optional dense CRF and ignore band.

    Keys: scores (source stage, random_walk), threshold (default: the source's label-free one),
    crf (true), crf_gt_prob (0.7), crf_settings.*, ignore_band (0: none), image_size (auto).
    """
    from tagseg.config import load_config
    from tagseg.skipping import skipped_by
    from tagseg.stages.pseudo_labels import STAGE, PseudoLabelConfig, make_pseudo_labels

    settings = load_config(PseudoLabelConfig, config, overrides)
    log_to_run(run)
    dataset, _ = _stage_datasets(dataset_path, split, on_error, workers)
    manifest = make_pseudo_labels(dataset, run, settings, workers=workers, force=force)
    masks = len(dataset.leave_out(skipped_by(manifest)))  # the score stage may have skipped more
    line = f"{STAGE}: {masks} masks at background threshold {manifest['threshold']:.3f}"
    if manifest.get("metrics"):
        line += f"; mIoU {_fmt(manifest['metrics']['miou'])}"
    out.print(line)


def _print_foreground_scores(stage: str, manifest: dict) -> None:
    metrics = manifest.get("metrics")
    if metrics:
        foreground = metrics["per_class"]["foreground"]
        out.print(f"{stage}: foreground IoU {_fmt(foreground['iou'])}, precision {_fmt(foreground['precision'])}, "
                  f"recall {_fmt(foreground['recall'])} on the pixels it labels; {_fmt(manifest['unlabelled'])}% "
                  "unlabelled")


@app.command("saliency")
def saliency_command(
    dataset_path: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset root.")],
    run: Annotated[Path, typer.Argument(help="Run directory; writes RUN/saliency/.")],
    config: ConfigFile = None,
    overrides: Overrides = None,
    split: Annotated[str, typer.Option(help="Split to make saliency masks for.")] = "train",
    workers: Workers = 2,
    force: Force = False,
    on_error: OnErrorOption = "stop",
) -> None:
    """Class-agnostic saliency masks (0 background, 1 object), the input of the dissertation's ch. 2.

    Keys: source (folder: your own maps | spectral_residual | fine_grained: OpenCV's model-free substitute |
    ground_truth: the binarised masks, an oracle), folder (for source folder: <folder>/<id>.png, any bit
    depth; resized to the image), threshold (null: 0.5 for your maps, per-map Otsu for OpenCV's; or a number,
    or otsu).
    """
    from tagseg.config import load_config
    from tagseg.stages.saliency import STAGE, SaliencyConfig, make_saliency

    settings = load_config(SaliencyConfig, config, overrides)
    log_to_run(run)
    dataset, _ = _stage_datasets(dataset_path, split, on_error, workers)
    _print_foreground_scores(STAGE, make_saliency(dataset, run, settings, workers=workers, force=force))


@app.command("refine-saliency")
def refine_saliency_command(
    dataset_path: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset root.")],
    run: Annotated[Path, typer.Argument(help="Run directory with RUN/make_cam/ and RUN/saliency/; writes "
                                             "RUN/refine_saliency/.")],
    config: ConfigFile = None,
    overrides: Overrides = None,
    split: Annotated[str, typer.Option(help="Split to refine.")] = "train",
    workers: Workers = 2,
    force: Force = False,
    on_error: OnErrorOption = "stop",
) -> None:
    """Saliency masks corrected by the CAMs (dissertation eq. 2.5-2.6): confident CAM pixels become
    foreground, salient pixels with low CAM scores unlabelled.

    Keys: cams (make_cam), saliency (saliency), tau1 (0.8), tau2 (0.3).
    """
    from tagseg.config import load_config
    from tagseg.stages.refine_saliency import STAGE, RefineSaliencyConfig, make_refined_saliency

    settings = load_config(RefineSaliencyConfig, config, overrides)
    log_to_run(run)
    dataset, _ = _stage_datasets(dataset_path, split, on_error, workers)
    _print_foreground_scores(STAGE, make_refined_saliency(dataset, run, settings, workers=workers, force=force))


@app.command("superpixels")
def superpixels_command(
    dataset_path: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset root.")],
    run: Annotated[Path, typer.Argument(help="Run directory; writes RUN/superpixels/.")],
    config: ConfigFile = None,
    overrides: Overrides = None,
    split: Annotated[str, typer.Option(help="Split to make superpixels for.")] = "train",
    device: Device = "auto",
    workers: Workers = 2,
    force: Force = False,
    on_error: OnErrorOption = "stop",
) -> None:
    """Superpixel label maps (dissertation ch. 3): discovered from patch features, cut from the same affinity
    by repeated normalised cut, or SLIC / SEEDS / LSC; scored with UE / ASA / boundary recall and precision
    when the dataset has masks.

    Keys: method (discovery | ncut | slic | seeds | lsc), features (cnn | vit), backbone (null: efficientnet_lite0
    or vit_small_dino8), weights (imagenet or a file), tau (auto or a number in [0, 1)), target_count (29),
    tau_sample (40), crf (false), crf_settings.*, image_size (auto).
    """
    from tagseg.config import load_config
    from tagseg.runtime import resolve_device
    from tagseg.stages.superpixels import STAGE, SuperpixelConfig, make_superpixels

    settings = load_config(SuperpixelConfig, config, overrides)
    log_to_run(run)
    dataset, _ = _stage_datasets(dataset_path, split, on_error, workers, device=device)
    manifest = make_superpixels(dataset, run, settings, device=resolve_device(device), workers=workers, force=force)
    line = f"{STAGE}: {settings.method}" + (f", tau {manifest['tau']:.3f}" if manifest.get("tau") is not None else "")
    metrics = manifest.get("metrics")
    if metrics:
        line += (f"; n {metrics['n']:.1f}, UE {_fmt(metrics['ue'])}, ASA {_fmt(metrics['asa'])}, "
                 f"BR {_fmt(metrics['br'])}, BP {_fmt(metrics['bp'])}")
    out.print(line)


@app.command("superpixel-seeds")
def superpixel_seeds_command(
    dataset_path: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset root.")],
    run: Annotated[Path, typer.Argument(help="Run directory with RUN/make_cam/ and RUN/superpixels/; writes "
                                             "RUN/superpixel_seeds/.")],
    config: ConfigFile = None,
    overrides: Overrides = None,
    split: Annotated[str, typer.Option(help="Split to seed.")] = "train",
    workers: Workers = 2,
    force: Force = False,
    on_error: OnErrorOption = "stop",
) -> None:
    """Sparse seeds (dissertation eq. 3.4-3.5): confident CAM pixels, and the least object-like superpixel
    as background; the rest unlabelled, for training with region growing.

    Keys: cams (make_cam), superpixels (superpixels), alpha (0.5).
    """
    from tagseg.config import load_config
    from tagseg.stages.superpixel_seeds import STAGE, SuperpixelSeedsConfig, make_superpixel_seeds

    settings = load_config(SuperpixelSeedsConfig, config, overrides)
    log_to_run(run)
    dataset, _ = _stage_datasets(dataset_path, split, on_error, workers)
    manifest = make_superpixel_seeds(dataset, run, settings, workers=workers, force=force)
    quality = manifest.get("seed_quality")
    if quality:
        out.print(f"{STAGE}: {_fmt(quality['labelled_fraction'])}% of pixels seeded, precision "
                  f"{_fmt(quality['precision'])}%")


@app.command("train-seg")
def train_seg_command(
    dataset_path: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset root.")],
    run: Annotated[Path, typer.Argument(help="Run directory with RUN/pseudo_labels/; writes RUN/train_seg/.")],
    config: ConfigFile = None,
    overrides: Overrides = None,
    split: Annotated[str, typer.Option(help="Split to train on.")] = "train",
    device: Device = "auto",
    workers: Workers = 2,
    force: Force = False,
    on_error: OnErrorOption = "stop",
) -> None:
    """Train a DeepLab network on pseudo-labels (or on the true masks: labels=ground_truth, the upper bound).

    Keys: labels (pseudo_labels | ground_truth | any mask stage), head (deeplabv3plus | deeplabv2),
    backbone, weights, output_stride (16), epochs (10), min_steps (400), steps (null), batch_size (8), crop_size (320),
    scale_range ([0.5, 1.5]), optimizer (adamw), lr (0.0003), head_lr_multiplier (10), freeze_bn (true), seed,
    objective (masks | saliency: the saliency loss on a refine_saliency or saliency stage's foreground masks,
    dissertation eq. 2.7), loss_scales ([1]: also train on these rescaled copies, losses summed),
    attention_paths (0: off; N masked copies per crop for the image-masking attention loss, eq. 2.8-2.11),
    attention_weight (2), classifier (train_cam: the stage whose frozen classifier judges the masked images),
    objective seeds (the balanced seed loss on sparse seeds, e.g. labels=superpixel_seeds, eq. 3.8) with
    growth (a superpixel stage: seeds grow into superpixels every step, eq. 3.6-3.7) and growth_beta (0.7).
    """
    from tagseg.config import load_config
    from tagseg.runtime import resolve_device
    from tagseg.stages.train_seg import STAGE, SegTrainConfig, train_seg

    settings = load_config(SegTrainConfig, config, overrides)
    log_to_run(run)
    dataset, _ = _stage_datasets(dataset_path, split, on_error, workers, device=device)
    manifest = train_seg(dataset, run, settings, device=resolve_device(device), workers=workers, force=force)
    out.print(f"{STAGE}: {settings.head} on {settings.labels}, {manifest['steps']} steps in "
              f"{len(manifest['history'])} passes, final loss {manifest['history'][-1]['loss']:.4f}, "
              f"{manifest['seconds_per_epoch']:.0f} s per pass")


@app.command("segment")
def segment_command(
    dataset_path: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset root.")],
    run: Annotated[Path, typer.Argument(help="Run directory with RUN/train_seg/; writes RUN/segment_<split>/.")],
    config: ConfigFile = None,
    overrides: Overrides = None,
    split: Annotated[str, typer.Option(help="Split to segment and score.")] = "val",
    device: Device = "auto",
    workers: Workers = 2,
    force: Force = False,
    on_error: OnErrorOption = "stop",
) -> None:
    """Segment a split with the trained network (multi-scale + flip, optional CRF) and score it.

    Keys: scales ([0.75, 1, 1.25], for a 320 px photo), flip (true), crf (false), crf_settings.*, image_size (auto).
    """
    from tagseg.config import load_config
    from tagseg.runtime import resolve_device
    from tagseg.stages.segment import SegmentConfig, segment_split

    settings = load_config(SegmentConfig, config, overrides)
    log_to_run(run)
    dataset, _ = _stage_datasets(dataset_path, split, on_error, workers, device=device)
    manifest = segment_split(dataset, run, settings, device=resolve_device(device), workers=workers, force=force)
    line = f"segment_{split}: {len(dataset)} masks"
    if manifest.get("metrics"):
        line += f"; mIoU {_fmt(manifest['metrics']['miou'])}"
    out.print(line)


@app.command("predict")
def predict_command(
    model: Annotated[Path, typer.Argument(help="A trained model: RUN/train_seg/model.pt, or its ONNX export "
                                                "(tagseg export; needs onnxruntime).")],
    images_dir: Annotated[Path, typer.Argument(metavar="IMAGES_DIR", help="Folder of images (no tags needed).")],
    out_dir: Annotated[Path, typer.Argument(metavar="OUT_DIR", help="Writes <id>.png masks and overlays/<id>.jpg.")],
    config: ConfigFile = None,
    overrides: Overrides = None,
    device: Device = "auto",
    force: Force = False,
) -> None:
    """Segment every image of a folder; unreadable images are reported and skipped (exit code 1).

    Keys: as for `segment` (scales, flip, crf, crf_settings.*, image_size: auto = the folder's median long side).
    """
    from tagseg.config import load_config
    from tagseg.runtime import resolve_device
    from tagseg.stages.segment import SegmentConfig, predict_folder

    settings = load_config(SegmentConfig, config, overrides)
    manifest = predict_folder(model, images_dir, out_dir, settings, device=resolve_device(device), force=force)
    failed = manifest.get("failed", {})
    done = len(list(Path(out_dir).glob("*.png")))
    out.print(f"predict: {done} masks in {out_dir}" + (f"; {len(failed)} image(s) failed:" if failed else ""))
    for name, message in failed.items():
        out.print(f"  {name}: {message}")
    if failed:
        raise typer.Exit(1)


@app.command("export")
def export_command(
    run: Annotated[Path, typer.Argument(help="Run directory with RUN/train_seg/model.pt.")],
    format: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
    out_path: Annotated[Optional[Path], typer.Option("--out", help="Where to write (default RUN/export/model.onnx).")]
    = None,
    opset: Annotated[int, typer.Option(min=13, help="ONNX opset version.")] = 17,
) -> None:
    """Export the trained segmentation network (any image size, logits at the input size) with its class
    names and normalisation; checked with onnxruntime against PyTorch before it is written."""
    from tagseg.export import export_onnx
    from tagseg.stages.train_seg import MODEL_FILE, STAGE

    if format != "onnx":
        raise typer.BadParameter(f"unknown format {format!r}; only onnx", param_hint="--format")
    target = out_path or run / "export" / "model.onnx"
    result = export_onnx(run / STAGE / MODEL_FILE, target, opset)
    out.print(f"export: {target} (opset {opset}); onnxruntime matches PyTorch within "
              f"{result['max_abs_difference']:.1e} on shapes {result['checked_shapes']}")


@app.command("run")
def run_command(
    recipe_path: Annotated[Path, typer.Argument(metavar="RECIPE", help="Recipe YAML (see recipes/).")],
    overrides: Overrides = None,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Processes (one per GPU, or CPU processes with gloo): "
                                                             "starts torchrun with this many.")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Recompute the stages whose settings or inputs "
                                                        "changed since they ran (default: refuse, naming the "
                                                        "change).")] = False,
) -> None:
    """Run a recipe's stages in order into one run directory; a rerun resumes where it stopped.

    After a stage runs, the later ones are checked against its new output: a stage whose inputs
    changed (e.g. a walk rescored with another label-free threshold under its pseudo-labels) is
    refused, naming the change, unless --force recomputes it.

    Override any recipe key with --set, e.g. --set run=runs/x --set stages.train_cam.epochs=3
    or --set on_error=skip (leave unreadable images out instead of stopping). With --nproc N (or
    under torchrun) the training stages train one model in N processes; rank 0 writes every file.
    """
    from tagseg.distributed import is_main, launched
    from tagseg.pipeline import load_recipe, run_recipe
    from tagseg.skipping import skipped_in_run

    recipe, configs = load_recipe(recipe_path, overrides)
    if nproc > 1 and not launched():
        raise typer.Exit(_torchrun(nproc))
    if os.environ.get("RANK", "0") == "0":  # one log file, written by rank 0
        log_to_run(recipe.run)
    record = run_recipe(recipe, configs, force)
    if not is_main():
        return
    manifests = {name: read_manifest(recipe.run / entry["output"]) or {} for name, entry in record["stages"].items()}
    for name, entry in record["stages"].items():
        manifest = manifests[name]
        metrics = manifest.get("metrics") or {}
        score = f"mIoU {_fmt(metrics['miou'])}" if metrics.get("miou") is not None else ""
        if (manifest.get("classification") or {}).get("map") is not None:
            score = f"mAP {_fmt(manifest['classification']['map'])} on {manifest['classification']['split']} tags"
        out.print(f"{name:16s} {entry['status']:9s} {entry.get('seconds', 0):8.1f} s  {score}")
    skipped = skipped_in_run(recipe.run)
    if skipped:
        out.print(f"skipped {len(skipped)} unreadable image(s), left out of the stages (listed in their manifests "
                  f"and the report): {', '.join(skipped)}")
    for manifest in manifests.values():
        _print_alarm(manifest, recipe.dataset)


def _torchrun(nproc: int) -> int:
    """This same command under torchrun with ``nproc`` processes (without --nproc); returns its exit code."""
    arguments, skip = [], False
    for argument in sys.argv[1:]:
        if skip or argument.startswith("--nproc="):
            skip = False
            continue
        skip = argument == "--nproc"
        if not skip:
            arguments.append(argument)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "tagseg", *arguments]
    logging.getLogger("tagseg").info("run: %s", " ".join(command))
    return subprocess.call(command)


@app.command("report")
def report_command(
    run: Annotated[Path, typer.Argument(help="Run directory; writes RUN/report/index.html.")],
    upper_bound: Annotated[Optional[Path], typer.Option(help="A fully supervised run to compare the final mIoU with "
                                                              "(default: the recipe's upper_bound_run).")] = None,
    dataset_path: Annotated[Optional[Path], typer.Option("--dataset", help="Dataset for the gallery (default: the "
                                                                          "recipe's).")] = None,
    split: Annotated[Optional[str], typer.Option(help="Split of the gallery images (default: the recipe's train "
                                                     "split).")] = None,
    gallery: Annotated[int, typer.Option(help="Images in the gallery.", min=0)] = 8,
    device: Device = "auto",
) -> None:
    """One static HTML page: per-stage metrics, per-class IoU, threshold curves, an image gallery."""
    from tagseg.errors import DataError
    from tagseg.report import write_report
    from tagseg.runtime import resolve_device

    if not run.is_dir():
        raise DataError(f"{run}: run directory not found")
    page = write_report(run, upper_bound, gallery, resolve_device(device), dataset_path, split)
    out.print(f"report: {page}")


def main() -> None:
    try:
        app()
    except TagsegError as error:
        logging.getLogger("tagseg").debug("error", exc_info=True)
        console.print(f"[red]error:[/red] {error}", markup=True, highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted; finished files are kept, rerun the same command to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
