"""Exceptions that the command line turns into one clear message (no traceback)."""

from __future__ import annotations

from typing import Literal

OnError = Literal["stop", "skip"]  # what a bad input image does: stop the run, or be left out (tagseg.skipping)


class TagsegError(Exception):
    """Base class: a problem the user can fix (bad input, bad config, refused rerun)."""


class DataError(TagsegError):
    """An input file is missing, unreadable or inconsistent; the message names the file."""


class ConfigError(TagsegError):
    """A configuration value is unknown, ill-typed or out of range."""


class StageError(TagsegError):
    """A stage refuses to run, e.g. its directory was made with another config."""
