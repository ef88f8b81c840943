"""train_cam / make_cam end to end on tiny synthetic data."""

import json

import numpy as np
import pytest
import torch

from tagseg.config import load_config
from tagseg.data.dataset import open_dataset
from tagseg.data.make_synthetic import write_synthetic_dataset
from tagseg.errors import ConfigError
from tagseg.label_free import GRID
from tagseg.metrics import ConfusionMatrix
from tagseg.stages.make_cam import MakeCamConfig, make_cams
from tagseg.stages.train_cam import CamTrainConfig, train_cam

TINY = dict(epochs=2, min_steps=0, batch_size=4, crop_size=64, lr=0.001, scale_range=(0.9, 1.1))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_dataset(root, 32, seed=1, size=(64, 48), val_fraction=0.25)
    return root


@pytest.fixture(scope="module")
def synthetic_128(tmp_path_factory):
    """Images big enough for stride-16 CAMs to localise (8 x 6 cells)."""
    root = tmp_path_factory.mktemp("synth128") / "data"
    write_synthetic_dataset(root, 48, seed=1, size=(128, 96), val_fraction=0.25)
    return root


def test_resume_reproduces_an_uninterrupted_run(synthetic, tmp_path, interrupted):
    dataset = open_dataset(synthetic, "train")
    config = CamTrainConfig(**TINY, weights=None)
    train_cam(dataset, tmp_path / "whole", config)

    interrupted(train_cam, dataset, tmp_path / "split", config)
    assert (tmp_path / "split" / "train_cam" / "checkpoint.pt").exists()
    assert not (tmp_path / "split" / "train_cam" / "model.pt").exists()
    manifest = train_cam(dataset, tmp_path / "split", config)
    assert [h["epoch"] for h in manifest["history"]] == [1, 2]

    whole = torch.load(tmp_path / "whole" / "train_cam" / "model.pt", weights_only=False)["state_dict"]
    resumed = torch.load(tmp_path / "split" / "train_cam" / "model.pt", weights_only=False)["state_dict"]
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_train_and_make_cam_beat_all_background(synthetic_128, tmp_path, monkeypatch):
    train, val = open_dataset(synthetic_128, "train"), open_dataset(synthetic_128, "val")
    config = CamTrainConfig(**{**TINY, "epochs": 10, "crop_size": 128})
    manifest = train_cam(train, tmp_path, config, eval_dataset=val)
    assert manifest["history"][-1]["loss"] < manifest["history"][0]["loss"] / 2
    assert manifest["classification"]["map"] > 0.5
    assert MakeCamConfig().label_free == "masking"
    cams = make_cams(train, tmp_path, MakeCamConfig(scales=(1.0, 1.5), label_free="expected_iou"))
    all_background = ConfusionMatrix(train.num_classes)
    for record in train.records:
        mask = train.load_mask(record)
        all_background.update(mask, np.zeros_like(mask))
    floor = all_background.scores()["miou"]
    assert cams["metrics"]["miou"] > 1.5 * floor, (cams["metrics"]["miou"], floor)
    assert 0 < cams["label_free"]["threshold"] < 1
    files = sorted(p.name for p in (tmp_path / "make_cam").glob("synth_*.npz"))
    assert len(files) == len(train)
    assert json.loads((tmp_path / "make_cam" / "manifest.json").read_text())["status"] == "complete"
    again = make_cams(train, tmp_path, MakeCamConfig(scales=(1.0, 1.5), label_free="expected_iou"))  # resumes
    assert again["timings"]["items_computed"] == len(train)
    free = again["label_free"]
    assert free["method"] == "expected_iou" and free["metrics"]["miou"] is not None
    # the label-free method is rescoring only: another one reuses the stage's CAMs
    otsu = make_cams(train, tmp_path, MakeCamConfig(scales=(1.0, 1.5), label_free="otsu"))
    assert otsu["label_free"]["method"] == "otsu" and otsu["timings"]["items_computed"] == len(train)
    # image_size 320: the classifier judges these 128 px photos at their own size (2.5x costs minutes)
    masked = make_cams(train, tmp_path, MakeCamConfig(scales=(1.0, 1.5), label_free="masking", image_size=320),
                       force=True)["label_free"]
    asked = masked if masked["method"] == "masking" else masked["masking"]  # a weak classifier falls back to Otsu
    assert asked["classes_asked"] > 0 and len(asked["criterion"]) == len(GRID)
    # the classifier judges masks at the pixel sizes it runs at: 320 / image_size of the photo
    shown = []
    monkeypatch.setattr("tagseg.evaluate.stage_threshold",
                        lambda *args, **kwargs: shown.append(kwargs["scale"]) or {"method": "otsu", "threshold": 0.5})
    make_cams(train, tmp_path, MakeCamConfig(scales=(1.0,), label_free="masking", image_size=640), force=True)
    assert shown == [0.5]
    # asked again, a finished stage keeps the choice of the same rule (masking runs the classifier for minutes)
    make_cams(train, tmp_path, MakeCamConfig(scales=(1.0,), label_free="masking", image_size=640))
    assert shown == [0.5]
    rescored = make_cams(train, tmp_path, MakeCamConfig(scales=(1.0,), label_free="otsu", image_size=640))
    assert shown == [0.5, 0.5] and rescored["label_free_rule"] == {"method": "otsu"}


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "cam.yaml"
    path.write_text("head: puzzel\nepochs: 0\nbogus: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(CamTrainConfig, path)
    message = str(caught.value)
    assert str(path) in message and "head:" in message and "epochs:" in message and "bogus: unknown key" in message
    with pytest.raises(ConfigError, match="crop_size divisible by 32"):
        load_config(CamTrainConfig, None, ["head=puzzle", "crop_size=100"])
    assert load_config(CamTrainConfig, None, ["scale_range=[0.5, 1.0]", "dilations=[2]"]).scale_range == (0.5, 1.0)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(CamTrainConfig, None, ["epochs"])


def test_pooling_over_the_real_image_only_trains_and_is_recorded(synthetic, tmp_path):
    assert "pool_padding" not in CamTrainConfig().identity()  # runs made before the setting still match
    dataset = open_dataset(synthetic, "train")                 # 64 x 48 images in 64 x 64 crops: padded
    config = CamTrainConfig(**TINY, weights=None, pool_padding=False)
    manifest = train_cam(dataset, tmp_path / "real_only", config)
    assert manifest["config"]["pool_padding"] is False
    assert all(np.isfinite(h["loss"]) for h in manifest["history"])
    default = train_cam(dataset, tmp_path / "default", CamTrainConfig(**TINY, weights=None))
    assert manifest["history"][0]["loss"] != pytest.approx(default["history"][0]["loss"])
