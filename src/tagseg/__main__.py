"""``python -m tagseg``: the command line, also what ``torchrun -m tagseg`` starts in every process."""

from tagseg.cli import main

main()
