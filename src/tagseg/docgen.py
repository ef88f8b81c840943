"""Reference pages of the documentation site, generated from the code so they cannot drift.

``mkdocs build`` calls these through ``docs_hooks.py``: the CLI reference is read from the typer
app (every command, argument and option with the help ``--help`` prints), the config reference
from the stages' pydantic models (every key with its type, default and description), and the
benchmark results page from ``benchmarks/results/`` (each JSON's command and metadata and the
Markdown table written beside it). Nothing generated is committed.
"""

from __future__ import annotations

import html
import importlib
import json
import pkgutil
import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

RESULTS_MARKER = re.compile(r"^<!-- results: ([\w.-]+) -->$", re.MULTILINE)


def _text(value: str) -> str:
    """Plain text made safe for Markdown: no HTML tags, no emphasis from ``*``."""
    return html.escape(value, quote=False).replace("*", r"\*")


def _cell(value: str) -> str:
    return _text(" ".join(value.split())).replace("|", r"\|")


def _code(value: str) -> str:
    return f"`{value}`" if value else ""


# --- CLI reference -----------------------------------------------------------------------------

def cli_commands(app=None) -> list[tuple[str, object, object]]:
    """``(full name, command, context)`` for the app and every (sub-)command, depth first."""
    import typer.main

    if app is None:
        from tagseg.cli import app
    root = typer.main.get_command(app)
    context_class = root.context_class
    found = []

    def visit(name: str, command, parent) -> None:
        context = context_class(command, info_name=name.split()[-1], parent=parent)
        found.append((name, command, context))
        if hasattr(command, "list_commands"):
            for sub in command.list_commands(context):
                visit(f"{name} {sub}", command.get_command(context, sub), context)

    visit("tagseg", root, None)
    return found


def _params_table(params, context, kind: str) -> list[str]:
    rows = [param.get_help_record(context) for param in params if param.param_type_name == kind]
    rows = [row for row in rows if row and not row[0].startswith("--help")]
    if not rows:
        return []
    title = "argument" if kind == "argument" else "option"
    lines = [f"| {title} | help |", "|---|---|"]
    lines += [f"| {_code(declaration)} | {_cell(help_text)} |" for declaration, help_text in rows]
    return lines + [""]


def cli_reference(app=None) -> str:
    """The CLI reference page: usage, help, arguments and options of every command."""
    lines = ["# CLI reference", "",
             "Generated from the `tagseg` typer app when the site is built; `tagseg COMMAND --help` "
             "prints the same text.", ""]
    for name, command, context in cli_commands(app):
        lines += [f"{'###' if name.count(' ') > 1 else '##'} `{name}`", ""]
        lines += ["```text", command.get_usage(context), "```", ""]
        if command.help:
            lines += [_text(paragraph.replace("\n", " ")) + "\n" for paragraph in command.help.split("\n\n")]
        lines += _params_table(command.get_params(context), context, "argument")
        lines += _params_table(command.get_params(context), context, "option")
        if hasattr(command, "list_commands"):
            subs = command.list_commands(context)
            lines += ["| command | what it does |", "|---|---|"]
            for sub in subs:
                short = (command.get_command(context, sub).help or "").split("\n\n")[0]
                lines.append(f"| [`{name} {sub}`](#{_anchor(f'{name} {sub}')}) | {_cell(short)} |")
            lines.append("")
    return "\n".join(lines)


def _anchor(title: str) -> str:
    """The id mkdocs' toc extension gives a heading ``` `title` ```."""
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", title).strip().lower())


# --- config reference --------------------------------------------------------------------------

def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(repr(arg).replace("'", "") for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(arg) for arg in args)
    if annotation is type(None):
        return "null"
    if origin is not None:
        inner = [_type_name(arg) if arg is not Ellipsis else "..." for arg in args]
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(inner)}]"
    if isinstance(annotation, type):
        return {"str": "str", "Path": "path", "NoneType": "null"}.get(annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        value = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, dict):
        return "(the keys below)" if value else "`{}`"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value, default=str)}`"


def _nested_model(annotation) -> type[BaseModel] | None:
    candidates = [annotation, *typing.get_args(annotation)]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def config_rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(key, type, default, description)`` for every field, nested models as dotted keys."""
    rows = []
    for name, field in model.model_fields.items():
        nested = _nested_model(field.annotation)
        key = f"{prefix}{name}"
        if nested is not None:
            rows.append((key, nested.__name__, "(the keys below)", field.description or ""))
            rows += config_rows(nested, f"{key}.")
        else:
            rows.append((key, _type_name(field.annotation), _default(field), field.description or ""))
    return rows


def stage_configs() -> dict[str, type[BaseModel]]:
    """Every stage's config model by stage name (each module of :mod:`tagseg.stages` with a ``STAGE``)."""
    import tagseg.stages

    found = {}
    for module_info in pkgutil.iter_modules(tagseg.stages.__path__):
        module = importlib.import_module(f"tagseg.stages.{module_info.name}")
        models = [value for value in vars(module).values() if isinstance(value, type)
                  and issubclass(value, BaseModel) and value.__module__ == module.__name__]
        nested = {_nested_model(field.annotation) for model in models for field in model.model_fields.values()}
        for model in models:
            if model not in nested:
                found[getattr(module, "STAGE", module_info.name)] = model
    return found


def _config_table(model: type[BaseModel], prefix: str = "") -> list[str]:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, type_name, default, description in config_rows(model, prefix):
        lines.append(f"| `{key}` | {type_name} | {default} | {_cell(description)} |")
    return lines + [""]


def config_reference() -> str:
    """The config reference page: the recipe's keys, then every stage's keys."""
    from tagseg.config import CrfConfig
    from tagseg.pipeline import Recipe, _specs

    in_recipes = set(_specs())
    with_set = {name.split()[-1] for name, command, _ in cli_commands()
                if any("--set" in getattr(param, "opts", ()) for param in command.params)}
    lines = ["# Config reference", "",
             "Generated from the pydantic models when the site is built. A stage command takes these keys "
             "from `--config FILE.yaml` and `--set key=value`; a recipe takes them under "
             "`stages.<stage>.<key>` (`--set stages.<stage>.<key>=value`). An unknown key or a value of "
             "the wrong type is an error naming the key.", "",
             "## Recipe (`tagseg run`)", "", _cell(Recipe.__doc__ or ""), ""]
    lines += _config_table(Recipe)
    for stage, model in sorted(stage_configs().items()):
        command = stage.replace("_", "-")
        where = f"recipe key `stages.{stage}`, command `tagseg {command}`" if stage in in_recipes \
            else f"command `tagseg {command}` (not a recipe stage)"
        if command not in with_set:
            where += f"; the command takes these keys as its options (`tagseg {command} --help`)"
        lines += [f"## `{stage}`", "", f"{where}.", ""]
        if model.__doc__ and "A base class" not in model.__doc__:
            lines += [_text(" ".join(model.__doc__.split())), ""]
        lines += _config_table(model)
    lines += ["## `crf_settings`", "", _text(" ".join((CrfConfig.__doc__ or "").split())), ""]
    lines += _config_table(CrfConfig, "crf_settings.")
    return "\n".join(lines)


# --- benchmark results -------------------------------------------------------------------------

def results_table(results: Path, name: str) -> str:
    """The Markdown table a benchmark wrote beside its JSON, with where it came from."""
    table = results / f"{name}.md"
    if not table.exists():
        raise FileNotFoundError(f"{table}: no such benchmark result")
    return (f"{table.read_text(encoding='utf-8').rstrip()}\n\n"
            f"<small>Table: `benchmarks/results/{name}.md`.</small>\n")


def include_results(markdown: str, results: Path) -> str:
    """Replace each ``<!-- results: NAME -->`` line with that result's table."""
    return RESULTS_MARKER.sub(lambda match: results_table(results, match.group(1)), markdown)


_METADATA = ("benchmark", "dataset", "split", "seed", "recipe", "overrides", "machine", "platform",
             "wall_seconds", "torch_threads", "threads", "batch", "crop")


def results_page(results: Path) -> str:
    """Every committed benchmark result: its command and settings from the JSON, then its table."""
    lines = ["# All benchmark results", "",
             "Generated from `benchmarks/results/` when the site is built: one section per result, with "
             "the command and settings its JSON records and the table the benchmark wrote. The pages "
             "beside this one explain what each result shows.", ""]
    for path in sorted(results.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        lines += [f"## `{path.stem}`", ""]
        command = data.get("command") if isinstance(data, dict) else None
        if command:
            lines += ["```bash", " ".join(command) if isinstance(command, list) else str(command), "```", ""]
        else:
            scripts = [s.stem for s in results.parent.glob("*.py") if path.stem.startswith(s.stem)]
            if scripts:
                lines += [f"Written by `benchmarks/{max(scripts, key=len)}.py`.", ""]
        for key in _METADATA:
            if isinstance(data, dict) and data.get(key) not in (None, "", [], {}):
                value = data[key]
                value = value if isinstance(value, (str, int, float)) else json.dumps(value)
                lines.append(f"- {key}: {_text(str(value))}")
        lines += ["", f"Data: `benchmarks/results/{path.name}`.", ""]
        if path.with_suffix(".md").exists():
            lines += [results_table(results, path.stem), ""]
    return "\n".join(lines)
