"""Several processes (torch.distributed, gloo on CPU): one model trained together, rank 0 writing every file."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from tagseg.data.dataset import open_dataset
from tagseg.data.make_synthetic import write_synthetic_dataset
from tagseg.distributed import join_local
from tagseg.stages.train_cam import CamTrainConfig, train_cam
from tagseg.training import epoch_batches

# SGD: its update is linear in the gradient, so the two runs' float rounding stays as small as it is
TINY = dict(epochs=1, min_steps=0, steps=2, batch_size=4, crop_size=64, weights=None, optimizer="sgd", lr=0.01,
            seed=3)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_dataset(root, 12, seed=4, size=(64, 48), val_fraction=0.25)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_in_group(rank: int, world: int, port: int, root, run, settings=None) -> None:
    torch.set_num_threads(1)
    join_local(rank, world, port)
    try:
        train_cam(open_dataset(root, "train"), run, CamTrainConfig(**(settings or TINY)))
    finally:
        torch.distributed.destroy_process_group()


def test_each_process_takes_its_share_of_the_same_global_batches():
    whole = epoch_batches(11, 4, seed=2, epoch=1)
    halves = [epoch_batches(11, 4, seed=2, epoch=1, rank=r, world=2) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == whole and len(whole) == 2
    with pytest.raises(Exception, match="does not split over 3 processes"):
        epoch_batches(11, 4, 0, 0, rank=0, world=3)


def test_two_processes_train_the_weights_one_process_trains(synthetic, tmp_path):
    torch.multiprocessing.spawn(train_in_group, args=(2, free_port(), synthetic, tmp_path / "two"), nprocs=2)
    train_cam(open_dataset(synthetic, "train"), tmp_path / "one", CamTrainConfig(**TINY))
    one, two = (torch.load(tmp_path / r / "train_cam" / "model.pt", weights_only=False) for r in ("one", "two"))
    for key, value in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][key], value, rtol=1e-4, atol=1e-5)
    assert not list((tmp_path / "two" / "train_cam").glob(".*tmp-*"))  # no half-written file left
    losses = [h["loss"] for h in read(tmp_path / "two")["history"]]
    assert losses == pytest.approx([h["loss"] for h in read(tmp_path / "one")["history"]], rel=1e-4)


def test_a_killed_run_resumes_with_another_number_of_processes(synthetic, tmp_path, interrupted):
    settings = {**TINY, "steps": 4}  # two passes of two steps
    dataset = open_dataset(synthetic, "train")
    train_cam(dataset, tmp_path / "whole", CamTrainConfig(**settings))
    interrupted(train_cam, dataset, tmp_path / "resumed", CamTrainConfig(**settings))  # one process, killed
    torch.multiprocessing.spawn(train_in_group, args=(2, free_port(), synthetic, tmp_path / "resumed", settings),
                                nprocs=2)  # two processes finish it
    whole, resumed = (torch.load(tmp_path / r / "train_cam" / "model.pt", weights_only=False)["state_dict"]
                      for r in ("whole", "resumed"))
    for key, value in whole.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-4, atol=1e-5)
    assert [h["epoch"] for h in read(tmp_path / "resumed")["history"]] == [1, 2]


def read(run):
    import json

    return json.loads((run / "train_cam" / "manifest.json").read_text())


def test_tagseg_run_with_two_processes(synthetic, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"dataset: {synthetic}\nrun: {tmp_path / 'run'}\nstages:\n"
                      "  train_cam: {steps: 2, min_steps: 0, batch_size: 4, crop_size: 64, weights: null}\n"
                      "  make_cam: {scales: [1.0]}\n")
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "tagseg", "--threads", "1", "run", str(recipe), "--nproc", "2"],
                            capture_output=True, text=True, env=environment, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = (tmp_path / "run" / "pipeline.json").read_text()
    assert '"status": "complete"' in record and read(tmp_path / "run")["status"] == "complete"
    assert len(list((tmp_path / "run" / "make_cam").glob("*.npz"))) == len(open_dataset(synthetic, "train"))
    # a stage command under torchrun joins the group too (alone, each process would find the other's lock)
    stage = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                            "-m", "tagseg", "--threads", "1", "pseudo-labels", str(synthetic), str(tmp_path / "run"),
                            "--set", "scores=make_cam", "--set", "crf=false"],
                           capture_output=True, text=True, env=environment, timeout=600)
    assert stage.returncode == 0, stage.stdout[-3000:] + stage.stderr[-3000:]
    labels = json_of(tmp_path / "run" / "pseudo_labels")
    assert labels["status"] == "complete" and labels["timings"]["items_computed"] == len(open_dataset(synthetic,
                                                                                                     "train"))


FAST_USS = dict(clusters=8, iterations=6, min_clusters=3, slic_segments=100, max_side=48)


def per_image_stages(rank: int, world: int, port: int, root, run) -> None:
    """Every per-image stage in order, in a group of ``world`` processes (one: no group)."""
    from tagseg.stages.affinity_labels import AffinityLabelsConfig, make_affinity_labels
    from tagseg.stages.boundary_labels import BoundaryLabelsConfig, make_boundary_labels
    from tagseg.stages.boundary_maps import BoundaryMapsConfig, make_boundary_maps
    from tagseg.stages.make_cam import MakeCamConfig, make_cams
    from tagseg.stages.perimeter import PerimeterConfig
    from tagseg.stages.perimeterfit import PerimeterFitConfig, perimeterfit
    from tagseg.stages.pseudo_labels import PseudoLabelConfig, make_pseudo_labels
    from tagseg.stages.random_walk import RandomWalkConfig, random_walk_stage
    from tagseg.stages.refine_saliency import RefineSaliencyConfig, make_refined_saliency
    from tagseg.stages.saliency import SaliencyConfig, make_saliency
    from tagseg.stages.segment import SegmentConfig, segment_split
    from tagseg.stages.superpixel_seeds import SuperpixelSeedsConfig, make_superpixel_seeds
    from tagseg.stages.superpixels import SuperpixelConfig, make_superpixels

    torch.set_num_threads(1)  # the same thread count in every run: a convolution's float sums depend on it
    if world > 1:
        join_local(rank, world, port)
    try:
        train = open_dataset(root, "train")
        make_cams(train, run, MakeCamConfig(scales=(1.0,), batch_size=2))
        make_saliency(train, run, SaliencyConfig())
        make_refined_saliency(train, run, RefineSaliencyConfig())
        make_superpixels(train, run, SuperpixelConfig(tau_sample=4, target_count=6))  # tau chosen by rank 0
        make_superpixel_seeds(train, run, SuperpixelSeedsConfig())
        segment_split(open_dataset(root, "val"), run, SegmentConfig(scales=(1.0,)))
        perimeterfit(train, run, PerimeterFitConfig(grid=(0.2, 0.4), perimeter=PerimeterConfig(**FAST_USS)))
        make_affinity_labels(train, run, AffinityLabelsConfig())
        make_boundary_labels(train, run, BoundaryLabelsConfig(crf=False))
        random_walk_stage(train, run, RandomWalkConfig(logt=2))
        make_boundary_maps(train, run, BoundaryMapsConfig())
        make_pseudo_labels(train, run, PseudoLabelConfig())
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


SHARDED = ("make_cam", "saliency", "refine_saliency", "superpixels", "superpixel_seeds", "segment_val", "perimeter_slic", "perimeter_quickshift", "perimeterfit",
           "affinity_labels", "boundary_labels", "random_walk", "boundary_maps", "pseudo_labels")


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    """A run with the three trained networks of the per-image stages (made by one process)."""
    from tagseg.stages.affinity_labels import AffinityLabelsConfig, make_affinity_labels
    from tagseg.stages.make_cam import MakeCamConfig, make_cams
    from tagseg.stages.train_affinity import AffinityTrainConfig, train_affinity
    from tagseg.stages.train_seg import SegTrainConfig, train_seg

    base = tmp_path_factory.mktemp("trained")
    dataset = open_dataset(synthetic, "train")
    train_cam(dataset, base, CamTrainConfig(**TINY))
    train_seg(dataset, base, SegTrainConfig(steps=1, min_steps=0, batch_size=2, crop_size=64, weights=None,
                                            head="deeplabv2", labels="ground_truth"))
    make_cams(dataset, base, MakeCamConfig(scales=(1.0,)))  # the boundary net's training labels
    make_affinity_labels(dataset, base, AffinityLabelsConfig(crf=False))
    train_affinity(dataset, base, AffinityTrainConfig(steps=1, min_steps=0, batch_size=2, crop_size=64, weights=None))
    for made in ("make_cam", "affinity_labels"):  # the processes make these again
        shutil.rmtree(base / made)
    return base


def stage_files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".npz", ".png") and not p.name.startswith("."))


def test_sharded_per_image_stages_write_the_same_bytes(synthetic, trained, tmp_path):
    for name in ("one", "two"):
        shutil.copytree(trained, tmp_path / name)
    torch.multiprocessing.spawn(per_image_stages, args=(1, 0, synthetic, tmp_path / "one"), nprocs=1)
    torch.multiprocessing.spawn(per_image_stages, args=(2, free_port(), synthetic, tmp_path / "two"), nprocs=2)
    for stage in SHARDED:
        one, two = (stage_files(tmp_path / r / stage) for r in ("one", "two"))
        assert one == two and one, stage
        for name in one:
            assert (tmp_path / "one" / stage / name).read_bytes() == (tmp_path / "two" / stage / name).read_bytes(), \
                f"{stage}/{name}"
        manifests = [json_of(tmp_path / r / stage) for r in ("one", "two")]
        assert manifests[1]["status"] == "complete"
        assert manifests[0]["timings"]["items_computed"] == manifests[1]["timings"]["items_computed"] == len(one)
        for key in ("metrics", "thresholds", "label_free", "seed_quality", "label_fractions", "boundary_metrics",
                    "mean_clusters_last_run", "tau"):
            assert manifests[0].get(key) == manifests[1].get(key), f"{stage}: {key}"
    assert json_of(tmp_path / "two" / "perimeterfit")["threshold_choice"] == "grid"


def killed_in_group(rank: int, world: int, port: int, root, run) -> None:
    """make_cam in two processes; rank 1 dies by SIGKILL halfway through writing its second file."""
    import signal

    from tagseg.rundir import atomic_write
    from tagseg.stages import make_cam

    written = []

    def dies_while_writing(path, scores, classes):
        if len(written) == 1:
            atomic_write(path, lambda tmp: (tmp.write_bytes(b"half a file"), os.kill(os.getpid(), signal.SIGKILL)))
        written.append(path)
        original(path, scores, classes)

    original = make_cam.save_score_map
    if rank == 1:
        make_cam.save_score_map = dies_while_writing
    per_image_stages_make_cam(rank, world, port, root, run)


def stage_command_group(rank: int, world: int, port: int, root) -> None:
    """What a stage command does first under torchrun, with torchrun's environment."""
    from tagseg import distributed
    from tagseg.cli import _stage_datasets

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    _stage_datasets(root, "train", "stop", 1)
    try:
        assert distributed.world_size() == world and distributed.rank() == rank
    finally:
        torch.distributed.destroy_process_group()


def test_a_stage_command_under_torchrun_joins_the_group(synthetic):
    torch.multiprocessing.spawn(stage_command_group, args=(2, free_port(), synthetic), nprocs=2)


def per_image_stages_make_cam(rank: int, world: int, port: int, root, run) -> None:
    from tagseg.stages.make_cam import MakeCamConfig, make_cams

    torch.set_num_threads(1)
    if world > 1:
        join_local(rank, world, port)
    try:
        make_cams(open_dataset(root, "train"), run, MakeCamConfig(scales=(1.0,), batch_size=1))
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def test_killing_one_process_leaves_no_partial_file_and_a_rerun_finishes(synthetic, trained, tmp_path):
    for name in ("whole", "killed"):
        shutil.copytree(trained, tmp_path / name)
    torch.multiprocessing.spawn(per_image_stages_make_cam, args=(1, 0, synthetic, tmp_path / "whole"), nprocs=1)
    with pytest.raises(Exception, match="signal|SIGKILL|exited"):
        torch.multiprocessing.spawn(killed_in_group, args=(2, free_port(), synthetic, tmp_path / "killed"), nprocs=2)
    stage = tmp_path / "killed" / "make_cam"
    assert json_of(stage)["status"] != "complete"
    assert list(stage.glob(".*tmp-*"))  # rank 1 died inside a write: its bytes never got the final name
    finished = stage_files(stage)
    assert 0 < len(finished) < len(stage_files(tmp_path / "whole" / "make_cam"))
    for name in finished:  # whatever carries a final name is whole
        assert (stage / name).read_bytes() == (tmp_path / "whole" / "make_cam" / name).read_bytes()
    torch.multiprocessing.spawn(per_image_stages_make_cam, args=(1, 0, synthetic, tmp_path / "killed"),
                                nprocs=1)  # the rerun, with one process
    assert not list(stage.glob(".*tmp-*")) and json_of(stage)["status"] == "complete"
    assert stage_files(stage) == stage_files(tmp_path / "whole" / "make_cam")
    for name in stage_files(stage):
        assert (stage / name).read_bytes() == (tmp_path / "whole" / "make_cam" / name).read_bytes()


def test_sync_batchnorm_needs_gpus_under_torchrun_and_changes_nothing_alone(synthetic, tmp_path):
    settings = {**TINY, "sync_batchnorm": True, "freeze_bn": False}
    with pytest.raises(Exception, match="sync_batchnorm needs a GPU per process"):
        torch.multiprocessing.spawn(train_in_group, args=(2, free_port(), synthetic, tmp_path / "two", settings),
                                    nprocs=2)
    dataset = open_dataset(synthetic, "train")
    train_cam(dataset, tmp_path / "synced", CamTrainConfig(**settings))
    train_cam(dataset, tmp_path / "plain", CamTrainConfig(**{**settings, "sync_batchnorm": False}))
    synced, plain = (torch.load(tmp_path / r / "train_cam" / "model.pt", weights_only=False)["state_dict"]
                     for r in ("synced", "plain"))
    assert synced.keys() == plain.keys()
    for key, value in plain.items():
        assert torch.equal(synced[key], value), key
    assert read(tmp_path / "synced")["config"]["sync_batchnorm"] is True
    assert "sync_batchnorm" not in read(tmp_path / "plain")["config"]  # at its default: older runs stay valid


def json_of(folder):
    import json

    return json.loads((folder / "manifest.json").read_text())
