"""Is the tag classifier good enough to build on? A tag-only hold-out and the weak-classifier alarm.

Every later stage (CAMs, seeds, the random walk, pseudo-labels, the segmentation network)
inherits the classifier's mistakes, and without masks nothing downstream can tell. So after
training, the classifier's mAP is measured on held-out tags (the eval split, or a stratified
hold-out carved from the training split) and the run warns loudly when it, a class's AP, or a
class's number of training images is low.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

import numpy as np


def carve_holdout(labels: Mapping[str, tuple[int, ...]], fraction: float, seed: int) -> list[str]:
    """Ids to hold out of classifier training, about ``fraction`` of each class's images, sorted.

    A class of n images gives at most floor(fraction * n) of them (so with fraction <= 0.5 it
    keeps most of its images for training, and a class of fewer than 1 / fraction images gives
    none). Rarest classes pick first; an image is taken only while every class it is tagged with
    is still under its quota. The result depends only on (ids, tags, fraction, seed), not on the
    order of ``labels``.
    """
    if fraction <= 0:
        return []
    ids = sorted(labels)
    shuffled = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    counts = Counter(c for item_id in ids for c in labels[item_id])
    quota = {c: math.floor(fraction * n) for c, n in counts.items()}
    held: set[str] = set()
    taken: Counter = Counter()
    for cls in sorted(counts, key=lambda c: (counts[c], c)):
        for item_id in shuffled:
            if taken[cls] >= quota[cls]:
                break
            tags = labels[item_id]
            if item_id not in held and cls in tags and all(taken[c] < quota[c] for c in tags):
                held.add(item_id)
                taken.update(tags)
    return sorted(held)


def classifier_alarm(mean_ap: float | None, class_ap: Mapping[str, float | None], train_images: Mapping[str, int],
                     *, min_map: float, min_class_ap: float, min_images: int) -> dict:
    """What is wrong with a trained classifier, as a JSON-ready dict (``fired`` is False when nothing is).

    Findings: ``low_map`` (mAP below ``min_map``; names the classes below it, worst first),
    ``low_class_ap`` (classes whose AP is below ``min_class_ap``) and ``few_images`` (classes with
    fewer than ``min_images`` training images). Classes without an AP (no held-out image of them)
    are only judged by their image count.
    """
    measured = {name: ap for name, ap in class_ap.items() if ap is not None}
    findings = []
    if mean_ap is not None and mean_ap < min_map:
        below = {name: round(ap, 4) for name, ap in sorted(measured.items(), key=lambda item: item[1]) if ap < min_map}
        findings.append({"kind": "low_map", "value": round(mean_ap, 4), "threshold": min_map, "classes": below})
    low = {name: round(ap, 4) for name, ap in sorted(measured.items(), key=lambda item: item[1]) if ap < min_class_ap}
    if low:
        findings.append({"kind": "low_class_ap", "threshold": min_class_ap, "classes": low})
    few = {name: n for name, n in sorted(train_images.items(), key=lambda item: item[1]) if n < min_images}
    if few:
        findings.append({"kind": "few_images", "threshold": min_images, "classes": few})
    named = {name for finding in findings for name in finding.get("classes", {})}
    return {"fired": bool(findings), "findings": findings, "classes": sorted(named),
            "thresholds": {"min_map": min_map, "min_class_ap": min_class_ap, "min_images": min_images}}


def finding_lines(alarm: dict, source: str | None) -> list[str]:
    """One plain sentence per finding, naming the classes (``source``: where the mAP was measured).
    Classes under the per-class floor are named there, not again under a low mAP."""
    lines = []
    floor = {name for f in alarm["findings"] if f["kind"] == "low_class_ap" for name in f["classes"]}
    for finding in alarm["findings"]:
        classes = finding["classes"]
        if finding["kind"] == "low_map":
            others = ", ".join(f"{name} {100 * ap:.1f}" for name, ap in classes.items() if name not in floor)
            lines.append(f"mAP {100 * finding['value']:.1f} on {source or 'held-out'} tags is below "
                         f"{100 * finding['threshold']:.1f}"
                         + (f" ({'other ' if floor else ''}classes below it: {others})" if others else ""))
        elif finding["kind"] == "low_class_ap":
            lines.append(f"AP below {100 * finding['threshold']:.1f}: "
                         + ", ".join(f"{name} {100 * ap:.1f}" for name, ap in classes.items()))
        else:
            lines.append(f"fewer than {finding['threshold']} training images: "
                         + ", ".join(f"{name} ({n})" for name, n in classes.items()))
    return lines


def advice(dataset_root: str | None = None) -> str:
    """Why a weak classifier matters and what to try."""
    return ("Every later stage (CAMs, seeds, the random walk, pseudo-labels, the segmentation network) inherits "
            "the classifier's mistakes, so expect poor masks for the classes named. Try more tagged images of "
            "them, longer training (steps / min_steps / epochs), or check the tags with "
            f"`tagseg data check {dataset_root or 'DATASET'}`.")
