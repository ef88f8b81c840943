"""Superpixels: the dissertation's discovery from patch features (ch. 3, §3.3.1, eq. 3.1, Table 3.1), its
normalised-cut comparison on the same affinity (§3.5, eq. 3.13-3.15) and the classic baselines (SLIC, SEEDS,
LSC) it is compared with.

Discovery groups the patches of one image by feature similarity, with no preset number of
superpixels: the remaining patch with the fewest positively similar remaining patches (the
lowest degree, i.e. the smallest object) seeds a superpixel, every remaining patch whose cosine
similarity to it exceeds tau joins it, and the search repeats on the rest. Arrays in, label
maps out; no file I/O.
"""

from __future__ import annotations

import cv2
import numpy as np

BASELINES = ("slic", "seeds", "lsc")


def discover_superpixels(features: np.ndarray, tau: float) -> np.ndarray:
    """Table 3.1 on an (h, w, D) grid of patch features: an (h, w) int32 map of superpixel indices 0..n-1,
    numbered in the order they are found.

    A = cosine similarities (eq. 3.1), B = [A > 0]; each round the remaining patch of lowest degree
    (the sum of B over the remaining patches; ties to the first in row-major order) seeds S_i =
    {remaining q : A[seed, q] > tau}, which leaves the candidates. The seed always joins its own
    superpixel (A = 1 > tau), so every patch ends in exactly one. O(N^2) time and memory for N patches.
    """
    if not 0 <= tau < 1:
        raise ValueError(f"tau must lie in [0, 1), got {tau}")
    height, width, depth = features.shape
    flat = features.reshape(-1, depth).astype(np.float32)
    flat = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    similarity = flat @ flat.T
    np.fill_diagonal(similarity, 1.0)  # a zero feature vector is still similar to itself
    positive = similarity > 0
    degree = positive.sum(axis=1).astype(np.int64)
    remaining = np.ones(len(flat), bool)
    labels = np.full(len(flat), -1, np.int32)
    index = 0
    while remaining.any():
        seed = int(np.flatnonzero(remaining)[np.argmin(degree[remaining])])
        members = remaining & (similarity[seed] > tau)
        labels[members] = index
        remaining &= ~members
        degree -= positive[:, members].sum(axis=1)  # degrees count remaining patches only
        index += 1
    return labels.reshape(height, width)


def ncut_superpixels(features: np.ndarray, tau: float, count: int, epsilon: float = 1e-3) -> np.ndarray:
    """The dissertation's normalised-cut superpixels (§3.5, eq. 3.13-3.15) on an (h, w, D) grid of patch
    features: an (h, w) int32 map numbered in the order the superpixels are cut off.

    W = 1 where the cosine similarity A (eq. 3.1) exceeds tau, else ``epsilon`` (eq. 3.13), D its row sums
    (eq. 3.14); the second smallest generalised eigenvector of (D - W) y = lambda D y (eq. 3.15), split at
    the mean of its entries, cuts the remaining patches in two, the smaller part becomes a superpixel and
    the cut repeats on the rest. The dissertation does not say when to stop: here after ``count``
    superpixels (so it can be compared at a matched count), or earlier when every remaining pair is above
    tau (an eigenvector of a uniform W splits at random) or the eigenvector no longer splits the rest. Equal halves: the part above the mean is taken.
    """
    if not 0 <= tau < 1:
        raise ValueError(f"tau must lie in [0, 1), got {tau}")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    height, width, depth = features.shape
    flat = features.reshape(-1, depth).astype(np.float64)
    flat = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    affinity = np.where(flat @ flat.T > tau, 1.0, epsilon)
    np.fill_diagonal(affinity, 1.0)
    labels = np.zeros(len(flat), np.int32)
    remaining = np.arange(len(flat))
    for index in range(count - 1):
        rest = affinity[np.ix_(remaining, remaining)]
        if len(remaining) < 2 or (rest == 1.0).all():  # one patch, or all alike: nothing left to cut
            break
        vector = second_eigenvector(rest)
        above = vector > vector.mean()
        if above.all() or not above.any():
            break
        cut = above if above.sum() <= len(above) / 2 else ~above
        labels[remaining[cut]] = index
        labels[remaining[~cut]] = index + 1
        remaining = remaining[~cut]
    return labels.reshape(height, width)


def second_eigenvector(affinity: np.ndarray, dense_below: int = 64) -> np.ndarray:
    """The generalised eigenvector y of (D - W) y = lambda D y with the second smallest lambda (eq. 3.15).

    With z = D^(1/2) y this is the eigenvector of D^(-1/2) W D^(-1/2) with the second largest eigenvalue:
    ARPACK's Lanczos (scipy's sparse ``eigsh``, a fixed start vector so runs repeat) finds it in a few
    products with the matrix, where a dense solve costs O(N^3) per cut; small matrices are solved densely.
    The sign is fixed so that the entry of largest magnitude is positive.
    """
    scale = 1.0 / np.sqrt(affinity.sum(axis=1))
    normalised = affinity * scale[:, None] * scale[None, :]
    if len(affinity) <= dense_below:
        vector = np.linalg.eigh(normalised)[1][:, -2]
    else:
        from scipy.sparse.linalg import eigsh

        start = np.random.default_rng(0).uniform(0.5, 1.5, len(affinity))
        values, vectors = eigsh(normalised, k=2, which="LA", v0=start, tol=1e-8)
        vector = vectors[:, np.argsort(values)[0]]
    vector = vector * scale
    return vector if vector[np.argmax(np.abs(vector))] > 0 else -vector


def count_for_tau(feature_grids: list[np.ndarray], tau: float) -> float:
    """Mean number of discovered superpixels per image at ``tau``."""
    return float(np.mean([discover_superpixels(grid, tau).max() + 1 for grid in feature_grids]))


def tau_for_count(feature_grids: list[np.ndarray], target: float, low: float = 0.0, high: float = 0.95,
                  steps: int = 12) -> tuple[float, float]:
    """The tau whose mean count over ``feature_grids`` is closest to ``target`` (no ground truth): bisection,
    as the count grows with tau. Returns (tau, its mean count)."""
    best = None
    for _ in range(steps):
        middle = (low + high) / 2
        count = count_for_tau(feature_grids, middle)
        if best is None or abs(count - target) < abs(best[1] - target):
            best = (round(middle, 4), count)
        if count < target:
            low = middle
        else:
            high = middle
    return best


def upsample_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """A patch-grid label map (h, w) to the image size by nearest neighbour."""
    return cv2.resize(labels.astype(np.int32), (width, height), interpolation=cv2.INTER_NEAREST)


def relabel(labels: np.ndarray) -> np.ndarray:
    """Connected-or-not label values renumbered 0..n-1 in order of first appearance (row-major)."""
    _, first, inverse = np.unique(labels.ravel(), return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].reshape(labels.shape).astype(np.int32)


def baseline_superpixels(image: np.ndarray, method: str, count: int, seed: int = 0) -> np.ndarray:
    """SLIC (scikit-image), SEEDS or LSC (OpenCV contrib's ximgproc) with about ``count`` superpixels:
    an (H, W) int32 map numbered 0..n-1."""
    height, width = image.shape[:2]
    count = max(2, int(count))
    if method == "slic":
        from skimage.segmentation import slic

        labels = slic(image, n_segments=count, compactness=10, start_label=0)
    elif method == "seeds":
        cv2.setRNGSeed(seed)
        engine = cv2.ximgproc.createSuperpixelSEEDS(width, height, 3, count, num_levels=4, prior=2,
                                                    histogram_bins=5)
        engine.iterate(cv2.cvtColor(image, cv2.COLOR_RGB2LAB), 10)
        labels = engine.getLabels()
    elif method == "lsc":
        region = max(4, int(round(np.sqrt(height * width / count))))
        engine = cv2.ximgproc.createSuperpixelLSC(cv2.cvtColor(image, cv2.COLOR_RGB2LAB), region_size=region)
        engine.iterate(10)
        engine.enforceLabelConnectivity(20)
        labels = engine.getLabels()
    else:
        raise ValueError(f"unknown superpixel method {method!r}; choose from {', '.join(BASELINES)}")
    return relabel(np.asarray(labels))


def baseline_request(images: list[np.ndarray], method: str, target: float, rounds: int = 3) -> tuple[int, float]:
    """The count to ask a baseline for so that it gives ``target`` superpixels per image on ``images`` on
    average (SLIC and SEEDS give fewer than asked, LSC about as many): a few proportional corrections.
    Returns (the count to ask for, the mean it gives)."""
    request, best = max(2, round(target)), None
    for _ in range(rounds):
        mean = float(np.mean([baseline_superpixels(image, method, request).max() + 1 for image in images]))
        if best is None or abs(mean - target) < abs(best[1] - target):
            best = (request, mean)
        request = max(2, round(request * target / max(mean, 1.0)))
    return best


def initial_seeds(scores: np.ndarray, classes: np.ndarray, superpixels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Eq. 3.4-3.5: the seed mask (H, W) uint8 of one image, 255 = unlabelled.

    ``scores`` (K, H, W) are the tagged classes' max-normalised CAMs (eq. 3.3, the make_cam output)
    for class indices ``classes``. A pixel takes its best class where that class's score exceeds
    ``alpha`` (eq. 3.4); then the superpixel with the lowest mean foreground score F = max_c M_c
    becomes background (eq. 3.5), also where eq. 3.4 had labelled it, as eq. 3.5 comes after.
    """
    if scores.shape[1:] != superpixels.shape:
        raise ValueError(f"scores {scores.shape[1:]} and superpixels {superpixels.shape} differ in size")
    seeds = np.full(superpixels.shape, 255, np.uint8)
    if len(classes):
        best = scores.argmax(axis=0)
        confident = scores.max(axis=0) > alpha
        seeds[confident] = np.asarray(classes, np.uint8)[best[confident]]
        foreground = scores.max(axis=0)
    else:
        foreground = np.zeros(superpixels.shape, np.float32)
    ids = np.unique(superpixels, return_inverse=True)[1].reshape(superpixels.shape)
    mean = np.bincount(ids.ravel(), weights=foreground.ravel()) / np.bincount(ids.ravel())
    seeds[ids == int(np.argmin(mean))] = 0
    return seeds
