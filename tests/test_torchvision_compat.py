import subprocess
import sys


def test_timm_and_torchvision_import_after_compat_step():
    # a fresh interpreter: the compat step must run before torchvision is first imported
    code = ("from tagseg.torchvision_compat import ensure_torchvision; ensure_torchvision(); ensure_torchvision();"
            "import torchvision, timm; m = timm.create_model('tf_efficientnet_lite0', pretrained=False);"
            "print(type(m).__name__)")
    result = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "EfficientNet"
