"""BES boundary labels (placeholder constants until the label branch merges)."""

BACKGROUND, BOUNDARY, FOREGROUND = 0, 1, 2
