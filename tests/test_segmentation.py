"""DeepLab heads, train_seg / segment stages and `tagseg predict` on tiny synthetic data."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tagseg.data.dataset import open_dataset
from tagseg.data.imageio import read_mask, write_mask
from tagseg.data.make_synthetic import write_synthetic_dataset
from tagseg.errors import DataError
from tagseg.models.backbones import create_backbone
from tagseg.models.segmentation import build_segmentation_net
from tagseg.rundir import stage_dir
from tagseg.stages.segment import SegmentConfig, overlay, predict_folder, segment_split
from tagseg.stages.train_seg import SegTrainConfig, load_seg_net, train_seg

TINY = dict(epochs=1, min_steps=0, batch_size=2, crop_size=64, weights=None)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_dataset(root, 6, seed=4, size=(64, 48), val_fraction=0.34)
    return root


@pytest.mark.parametrize("head", ["deeplabv2", "deeplabv3plus"])
def test_heads_return_logits_at_input_size(head):
    net = build_segmentation_net(head, create_backbone(weights=None), num_classes=5).eval()
    with torch.no_grad():
        logits = net(torch.zeros(2, 3, 72, 100))
    assert logits.shape == (2, 5, 72, 100)


def test_deeplabv3plus_uses_atrous_separable_convolutions():
    net = build_segmentation_net("deeplabv3plus", create_backbone(weights=None), num_classes=5)
    head_convs = [m for module in net.new_modules() for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    spatial = [m for m in head_convs if m.kernel_size == (3, 3)]
    assert len(spatial) == 5 and all(m.groups == m.in_channels for m in spatial)
    assert sorted(m.dilation[0] for m in spatial) == [1, 1, 6, 12, 18]


def test_overlay_paints_only_foreground():
    image = np.full((2, 2, 3), 100, np.uint8)
    mask = np.array([[0, 1], [0, 0]], np.uint8)
    blended = overlay(image, mask)
    assert (blended[0, 0] == 100).all() and not (blended[0, 1] == 100).all()


def test_train_on_pseudo_labels_and_ground_truth_then_segment(synthetic, tmp_path):
    train, val = open_dataset(synthetic, "train"), open_dataset(synthetic, "val")
    with pytest.raises(Exception, match="pseudo_labels"):
        train_seg(train, tmp_path, SegTrainConfig(**TINY))
    with stage_dir(tmp_path, "pseudo_labels", {"copied": True}) as stage:
        for record in train.records:
            write_mask(stage.item_path(record.id, ".png"), read_mask(record.mask_path, train.num_classes))
    manifest = train_seg(train, tmp_path, SegTrainConfig(**{**TINY, "epochs": 2}))
    assert [h["epoch"] for h in manifest["history"]] == [1, 2]
    result = segment_split(val, tmp_path, SegmentConfig(scales=(1.0,)))
    assert 0 <= result["metrics"]["miou"] <= 1
    assert sorted(p.stem for p in (tmp_path / "segment_val").glob("*.png")) == sorted(val.ids)
    again = segment_split(val, tmp_path, SegmentConfig(scales=(1.0,)))
    assert again["timings"]["items_computed"] == len(val)

    upper = tmp_path / "upper"
    supervised = train_seg(train, upper, SegTrainConfig(**TINY, labels="ground_truth"))
    assert supervised["config"]["labels"] == "ground_truth"


def test_predict_reports_a_corrupt_image_and_finishes_the_rest(synthetic, tmp_path):
    from typer.testing import CliRunner

    from tagseg.cli import app

    train = open_dataset(synthetic, "train")
    train_seg(train, tmp_path / "run", SegTrainConfig(**TINY, labels="ground_truth"))
    folder = tmp_path / "images"
    folder.mkdir()
    for record in train.records[:3]:
        shutil.copy(record.image_path, folder / record.image_path.name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    model = tmp_path / "run" / "train_seg" / "model.pt"
    result = CliRunner().invoke(app, ["predict", str(model), str(folder), str(tmp_path / "out"), "--device", "cpu",
                                      "--set", "scales=[1.0]"])
    assert result.exit_code == 1
    assert "broken.jpg" in result.output and "3 masks" in result.output
    assert len(list((tmp_path / "out" / "overlays").glob("*.jpg"))) == 3
    manifest = predict_folder(model, folder, tmp_path / "out", SegmentConfig(scales=(1.0,)))
    assert manifest["timings"]["items_computed"] == 3 and "broken.jpg" in manifest["failed"]


def test_bad_model_file_is_named(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(DataError, match="model.pt"):
        load_seg_net(bad)
    with pytest.raises(DataError, match="no trained segmentation model"):
        load_seg_net(tmp_path / "missing.pt")


def test_onnx_export_matches_pytorch_and_predicts_the_same_masks(synthetic, tmp_path):
    from typer.testing import CliRunner

    from tagseg.cli import app
    from tagseg.export import OnnxSegmenter

    train = open_dataset(synthetic, "train")
    run = tmp_path / "run"
    train_seg(train, run, SegTrainConfig(**TINY, head="deeplabv2", labels="ground_truth"))
    result = CliRunner().invoke(app, ["export", str(run)])
    assert result.exit_code == 0, result.output
    exported = run / "export" / "model.onnx"
    assert "onnxruntime matches PyTorch" in result.output and exported.exists()
    segmenter = OnnxSegmenter(exported)
    net, saved = load_seg_net(run / "train_seg" / "model.pt")
    assert segmenter.class_names == tuple(saved["class_names"]) and segmenter.backbone.mean == net.backbone.mean
    batch = torch.randn(1, 3, 50, 70)  # a size the export never saw
    with torch.no_grad():
        torch.testing.assert_close(segmenter(batch), net(batch), atol=1e-3, rtol=1e-3)

    folder = tmp_path / "images"
    folder.mkdir()
    for record in train.records[:2]:
        shutil.copy(record.image_path, folder / record.image_path.name)
    config = SegmentConfig(scales=(1.0,))
    predict_folder(run / "train_seg" / "model.pt", folder, tmp_path / "pt", config)
    predict_folder(exported, folder, tmp_path / "onnx", config)
    for record in train.records[:2]:
        same = read_mask(tmp_path / "pt" / f"{record.id}.png", 3) == read_mask(tmp_path / "onnx" / f"{record.id}.png", 3)
        assert same.mean() > 0.99  # float differences may flip a pixel on a tie

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(DataError, match="bad.onnx: not a TagSeg ONNX export"):
        predict_folder(bad, folder, tmp_path / "bad_out", config)


def test_export_without_the_onnx_extra_says_how_to_install_it(tmp_path, monkeypatch):
    import sys

    from tagseg.errors import ConfigError
    from tagseg.export import export_onnx

    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'tagseg\[onnx\]'"):
        export_onnx(tmp_path / "model.pt", tmp_path / "model.onnx")
