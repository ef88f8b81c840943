"""Random walk over pixel affinities (PSA / IRN): spreads CAM scores inside regions that edges enclose.

Each pixel only talks to neighbours within a small radius, so the transition matrix is
sparse and the walk needs O(pixels * neighbours) memory, where the reference pipelines'
dense N x N power needs O(N^2). The dense version is kept as a test oracle and baseline.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch

Offsets = np.ndarray | list | tuple


def neighbor_offsets(radius: int) -> np.ndarray:
    """Offsets (K, 2) as (dy, dx) with 0 < dy^2 + dx^2 < radius^2, one of each +-pair.

    Only the half-plane dy > 0, or dy == 0 and dx > 0, is listed, so every unordered pixel
    pair appears once; the full neighbourhood is these offsets and their negatives.
    """
    dy, dx = np.meshgrid(np.arange(0, max(radius, 0)), np.arange(1 - radius, max(radius, 1)), indexing="ij")
    dy, dx = dy.ravel(), dx.ravel()
    keep = (dy * dy + dx * dx < radius * radius) & ((dy > 0) | ((dy == 0) & (dx > 0)))
    return np.stack([dy[keep], dx[keep]], axis=1).astype(np.int64)


def as_offsets(offsets: Offsets) -> np.ndarray:
    """Offsets as an (K, 2) int64 array of (dy, dx) rows."""
    return np.asarray(offsets, dtype=np.int64).reshape(-1, 2)


def shifted_overlap(height: int, width: int, dy: int, dx: int) -> tuple[int, int, int, int]:
    """The pixels (y0:y1, x0:x1) whose partner at (y + dy, x + dx) lies inside an height x width map."""
    y0, x0 = min(height, max(0, -dy)), min(width, max(0, -dx))
    return y0, max(y0, height - max(0, dy)), x0, max(x0, width - max(0, dx))


def neighbor_maps(values: torch.Tensor, offsets: Offsets, fill: float | int | bool) -> torch.Tensor:
    """Shifted copies (K, *values.shape): out[k, ..., y, x] = values[..., y + dy_k, x + dx_k], or ``fill`` outside."""
    offsets = as_offsets(offsets)
    height, width = values.shape[-2:]
    out = values.new_full((len(offsets), *values.shape), fill)
    for k, (dy, dx) in enumerate(offsets.tolist()):
        y0, y1, x0, x1 = shifted_overlap(height, width, dy, dx)
        out[k, ..., y0:y1, x0:x1] = values[..., y0 + dy:y1 + dy, x0 + dx:x1 + dx]
    return out


def path_affinities(boundary: torch.Tensor, offsets: Offsets) -> torch.Tensor:
    """IRN affinities (K, h, w): 1 - the largest boundary value on the segment from p to p + offset_k.

    The segment is sampled at max(|dy|, |dx|) + 1 points rounded to pixel centres, endpoints
    included. Pairs whose second pixel lies outside the image read boundary 1, so get 0.
    """
    offsets = as_offsets(offsets)
    result = boundary.new_empty((len(offsets), *boundary.shape))
    for k, (dy, dx) in enumerate(offsets.tolist()):
        t = np.linspace(0.0, 1.0, max(abs(dy), abs(dx)) + 1)
        points = np.unique(np.rint(np.stack([t * dy, t * dx], axis=1)).astype(np.int64), axis=0)
        result[k] = 1 - neighbor_maps(boundary, points, 1.0).amax(0)
    return result.clamp_(0, 1)


def _neighbourhood(weights: torch.Tensor, offsets: np.ndarray) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Per neighbour of the full symmetric neighbourhood (self included), in increasing column order:
    its flat index offset, which pixels have it inside the image (N,), and the pair weights (N,).

    ``weights[k]`` holds the weight of (p, p + offset_k) at p; the pair (p, p - offset_k) is the
    pair (q, q + offset_k) of q = p - offset_k, so its weight is ``weights[k]`` shifted back.
    """
    height, width = weights.shape[1:]
    ones = torch.ones((height, width), dtype=torch.bool, device=weights.device)
    pairs = offsets.tolist()
    signed = [(0, 0, None, False)] + [(dy, dx, k, False) for k, (dy, dx) in enumerate(pairs)] \
        + [(-dy, -dx, k, True) for k, (dy, dx) in enumerate(pairs)]
    for dy, dx, k, backward in sorted(signed, key=lambda entry: entry[0] * width + entry[1]):
        inside = neighbor_maps(ones, [(dy, dx)], False)[0]
        if k is None:
            pair = inside.to(weights.dtype)
        elif backward:
            pair = neighbor_maps(weights[k], [(dy, dx)], 0.0)[0]
        else:
            pair = weights[k]
        yield dy * width + dx, inside.ravel(), pair.ravel()


def transition_matrix(affinities: torch.Tensor, offsets: Offsets, beta: float) -> torch.Tensor:
    """Row-stochastic sparse CSR (N, N), N = h * w, on the affinities' device.

    Before normalisation the matrix is symmetric: weight affinity^beta between p and p + offset_k
    in both directions, 1 on the diagonal, nothing for pairs leaving the image. Each row is then
    divided by its sum. Indices are int32 and columns sorted within rows; peak memory is about
    8 bytes per stored entry plus a few (K, h, w) maps.
    """
    offsets = as_offsets(offsets)
    _, height, width = affinities.shape
    size = height * width
    device = affinities.device
    inside = neighbor_maps(torch.ones((height, width), dtype=torch.bool, device=device), offsets, False)
    weights = affinities.float().clamp(min=0).pow_(beta).mul_(inside)
    del inside
    degree = torch.zeros(size, device=device)
    counts = torch.zeros(size, dtype=torch.int64, device=device)
    for _, valid, pair in _neighbourhood(weights, offsets):
        degree += pair
        counts += valid
    crow = torch.zeros(size + 1, dtype=torch.int64, device=device)
    crow[1:] = counts.cumsum(0)
    entries = int(crow[-1])
    columns = torch.empty(entries, dtype=torch.int32, device=device)
    values = torch.empty(entries, dtype=torch.float32, device=device)
    cursor = crow[:-1].clone()
    for shift, valid, pair in _neighbourhood(weights, offsets):
        rows = valid.nonzero().squeeze(1)
        position = cursor[rows]
        columns[position] = (rows + shift).to(torch.int32)
        values[position] = pair[rows] / degree[rows]
        cursor[rows] += 1
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow.to(torch.int32), columns, values, (size, size), check_invariants=False)


def random_walk(scores: torch.Tensor, transition: torch.Tensor, steps: int) -> torch.Tensor:
    """Scores (C, h, w) after ``steps`` walk steps: x <- T @ x with x the (N, C) score matrix.

    T is row-stochastic (see :func:`transition_matrix`), so each step replaces a pixel's scores
    by the affinity-weighted average of its neighbourhood's. Memory beyond T is two (N, C)
    float32 buffers; both tensors must be on one device (CPU or CUDA).
    """
    classes, height, width = scores.shape
    x = scores.reshape(classes, -1).t().float().contiguous()
    for _ in range(steps):
        x = transition @ x
    return x.t().reshape(classes, height, width)


def random_walk_dense_reference(scores: torch.Tensor, affinities: torch.Tensor, offsets: Offsets, beta: float,
                                logt: int) -> torch.Tensor:
    """The reference pipelines' walk: dense N x N transition, squared ``logt`` times, one product.

    Equals ``random_walk(scores, transition_matrix(affinities, offsets, beta), 2 ** logt)``
    but needs N^2 memory, so only for small maps and timing comparisons.
    """
    offsets = as_offsets(offsets)
    classes, height, width = scores.shape
    size = height * width
    device = scores.device
    index = torch.arange(size, device=device).reshape(height, width)
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    matrix = torch.zeros((size, size), device=device)
    for k, (dy, dx) in enumerate(offsets.tolist()):
        valid = (ys + dy >= 0) & (ys + dy < height) & (xs + dx >= 0) & (xs + dx < width)
        first = index[valid]
        second = first + dy * width + dx
        weight = affinities[k][valid].float().clamp(min=0).pow(beta)
        matrix[first, second] = weight
        matrix[second, first] = weight
    matrix.fill_diagonal_(1.0)
    matrix /= matrix.sum(1, keepdim=True)
    for _ in range(logt):
        matrix = matrix @ matrix
    return (matrix @ scores.reshape(classes, size).t().float()).t().reshape(classes, height, width)
