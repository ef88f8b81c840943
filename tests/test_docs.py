"""The documentation: the site builds strictly and offline, its generated references match the code,
and the README's cheap commands run as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer.main
from PIL import Image
from pydantic import BaseModel

from tagseg import docgen
from tagseg.cli import app
from tagseg.pipeline import Recipe, _specs, load_recipe

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _env() -> dict:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def test_site_builds_strictly_and_needs_no_network(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                             "-d", str(site)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    cli = (site / "reference" / "cli.html").read_text(encoding="utf-8")
    assert "tagseg data synth" in cli and "--on-error" in cli  # generated, not the committed placeholder
    assert "puzzle_reconstruction" in (site / "reference" / "config.html").read_text(encoding="utf-8")
    assert "62.4 (0.24)" in (site / "benchmarks" / "cam.html").read_text(encoding="utf-8")  # a results table
    external = set()
    for page in site.rglob("*.html"):
        external |= set(re.findall(r'(?:src|href)="((?:https?:)?//[^"]+)"', page.read_text(encoding="utf-8")))
    for sheet in site.rglob("*.css"):
        external |= set(re.findall(r"url\(['\"]?((?:https?:)?//[^)'\"]+)", sheet.read_text(encoding="utf-8")))
    assert not external, f"the site loads from the network: {sorted(external)[:5]}"


def _app_commands(command, name="tagseg"):
    """(full name, command) for the app and every sub-command, straight from the click tree."""
    yield name, command
    for sub_name, sub in getattr(command, "commands", {}).items():
        yield from _app_commands(sub, f"{name} {sub_name}")


def _sections(page: str) -> dict[str, str]:
    """Heading text (inside backticks) -> the text under it, for ``## `x` `` and ``### `x` `` headings."""
    parts = re.split(r"^#{2,3} `([^`]+)`\s*$", page, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


def test_cli_reference_lists_every_command_argument_and_option():
    sections = _sections(docgen.cli_reference())
    commands = dict(_app_commands(typer.main.get_command(app)))
    assert set(sections) == set(commands)
    assert {"tagseg data check", "tagseg data synth", "tagseg train-cam", "tagseg run"} <= set(commands)
    for name, command in commands.items():
        text = sections[name]
        for param in command.params:
            if param.param_type_name == "option":
                for flag in [*param.opts, *param.secondary_opts]:
                    assert re.search(rf"`[^`]*{re.escape(flag)}\b", text), f"{name}: {flag} missing"
                if param.help:
                    assert docgen._cell(param.help).split(" [")[0][:40] in text, f"{name}: help of {param.name}"
            else:
                assert f"`{(param.metavar or param.name)}" in text, f"{name}: argument {param.name} missing"
        if command.help:
            assert docgen._text(" ".join(command.help.split("\n\n")[0].split()))[:60] in " ".join(text.split())


def _fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        yield f"{prefix}{name}", field
        nested = next((t for t in [field.annotation, *getattr(field.annotation, "__args__", ())]
                       if isinstance(t, type) and issubclass(t, BaseModel)), None)
        if nested is not None:
            yield from _fields(nested, f"{prefix}{name}.")


def test_config_reference_lists_every_key_of_every_stage():
    page = docgen.config_reference()
    sections = _sections(page)
    models = docgen.stage_configs()
    assert {name: spec.config for name, spec in _specs().items()}.items() <= models.items()
    assert {"prior", "perimeter"} <= set(models)  # stage commands outside recipes
    for stage, model in models.items():
        for key, field in _fields(model):
            assert f"| `{key}` |" in sections[stage], f"{stage}.{key} missing"
            assert docgen._cell(field.description or "") in sections[stage]
    recipe = page.split("## Recipe", 1)[1]
    assert all(f"| `{key}` |" in recipe for key in Recipe.model_fields)
    assert "| `crf_settings.bilateral_sxy` | float | `32.0` |" in sections["pseudo_labels"]
    assert "| `alarm.min_images` | int | `10` |" in sections["train_cam"]


def test_every_config_key_has_a_description():
    models = [*docgen.stage_configs().values(), Recipe]
    missing = [f"{model.__name__}.{key}" for model in models for key, field in _fields(model) if not field.description]
    assert not missing, f"add Field(description=...) for: {missing}"


def _readme_commands() -> list[list[str]]:
    """The ``tagseg`` command lines of the README's bash blocks, comments and continuations resolved."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] in ("tagseg", ".venv/bin/tagseg"):
                commands.append(words[1:])
    return commands


def _cheap(args: list[str]) -> bool:
    if args in (["--help"], ["--version"]):
        return True
    if args[:2] == ["data", "synth"]:
        return "--count" in args and int(args[args.index("--count") + 1]) <= 16
    return args[:2] == ["data", "check"]


def _write_folder_dataset(root: Path) -> None:
    """The README's example folder: images/img001.jpg and img002.jpg with their tags."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("img001.jpg", "img002.jpg"):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(root / "images" / name)
    (root / "tags.csv").write_text("image,tags,split\nimg001.jpg,dog sofa,train\nimg002.jpg,cat,train\n",
                                   encoding="utf-8")


def test_readme_cheap_commands_run_as_written(tmp_path):
    commands = _readme_commands()
    cheap = [args for args in commands if _cheap(args)]
    assert ["--help"] in cheap and any(a[:2] == ["data", "synth"] for a in cheap)
    assert sum(a[:2] == ["data", "check"] for a in cheap) >= 2
    _write_folder_dataset(tmp_path / "my_photos")
    for args in cheap:
        result = subprocess.run([sys.executable, "-m", "tagseg.cli", *args], cwd=tmp_path, env=_env(),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"tagseg {shlex.join(args)}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
    assert (tmp_path / "tiny" / "JPEGImages").is_dir()


def test_readme_recipe_commands_are_valid():
    """`tagseg run` lines are too slow to run here; their recipe and overrides must validate."""
    runs = [args for args in _readme_commands() if args[:1] == ["run"]]
    assert runs
    for args in runs:
        overrides = [args[k + 1] for k, word in enumerate(args) if word == "--set"]
        recipe, configs = load_recipe(ROOT / args[1], overrides)
        assert configs and recipe.stages


DOCUMENTS = ["README.md", *sorted(str(path.relative_to(ROOT)) for path in (ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_relative_links_point_at_files(document):
    path = ROOT / document
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
        if not re.match(r"[a-z]+:", target):
            assert (path.parent / target).exists(), f"{document}: broken link {target}"


def test_readme_is_short():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 250
