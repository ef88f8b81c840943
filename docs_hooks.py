"""mkdocs hooks (``hooks:`` in mkdocs.yml): the generated reference pages and benchmark tables.

The pages come from :mod:`tagseg.docgen` at build time, so they always match the code and the
committed results (the files committed under those names are short placeholders for readers of
the repository); ``<!-- results: NAME -->`` in a page becomes the table of
``benchmarks/results/NAME.md``.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

from tagseg import docgen

RESULTS = Path(__file__).resolve().parent / "benchmarks" / "results"
GENERATED = {
    "reference/cli.md": docgen.cli_reference,
    "reference/config.md": docgen.config_reference,
    "benchmarks/results.md": lambda: docgen.results_page(RESULTS),
}


def on_files(files, config):
    for path, make in GENERATED.items():
        stub = files.get_file_from_path(path)  # the committed placeholder that GitHub shows
        if stub is not None:
            files.remove(stub)
        files.append(File.generated(config, path, content=make()))
    return files


def on_page_markdown(markdown, page, config, files):
    try:
        return docgen.include_results(markdown, RESULTS)
    except FileNotFoundError as error:
        raise PluginError(f"{page.file.src_uri}: {error}") from None
