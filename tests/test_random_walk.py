import numpy as np
import pytest
import torch

from tagseg.refine.random_walk import (
    neighbor_maps, neighbor_offsets, path_affinities, random_walk, random_walk_dense_reference, transition_matrix,
)


def test_neighbor_offsets_radius_5_half_plane_without_duplicates():
    offsets = neighbor_offsets(5)
    # points with 0 < dy^2 + dx^2 < 25: rows dy = 0, +-1, +-2, +-3, +-4 hold 8, 9, 9, 7, 5 of them -> 68, half is 34
    assert offsets.shape == (34, 2) and offsets.dtype == np.int64
    dy, dx = offsets[:, 0], offsets[:, 1]
    assert np.all((dy > 0) | ((dy == 0) & (dx > 0)))
    assert np.all(dy * dy + dx * dx < 25)
    full = np.concatenate([offsets, -offsets])
    assert len({tuple(o) for o in full.tolist()}) == 68
    assert (0, 0) not in {tuple(o) for o in full.tolist()}
    assert neighbor_offsets(1).shape == (0, 2)
    np.testing.assert_array_equal(neighbor_offsets(2), [[0, 1], [1, -1], [1, 0], [1, 1]])


def test_neighbor_maps_shift_and_fill():
    values = torch.arange(6).reshape(2, 3)
    shifted = neighbor_maps(values, [[0, 1], [1, -1], [5, 0]], -1)
    np.testing.assert_array_equal(shifted[0], [[1, 2, -1], [4, 5, -1]])
    np.testing.assert_array_equal(shifted[1], [[-1, 3, 4], [-1, -1, -1]])
    assert (shifted[2] == -1).all()


def test_path_affinities_wall_blocks_pairs_across_it():
    boundary = torch.zeros(6, 7)
    boundary[:, 3] = 1.0
    offsets = np.array([[0, 1], [0, 2], [1, 1], [2, 0], [1, -2]])
    affinity = path_affinities(boundary, offsets)
    assert affinity.shape == (5, 6, 7)
    ys, xs = np.meshgrid(np.arange(6), np.arange(7), indexing="ij")
    for k, (dy, dx) in enumerate(offsets):
        qy, qx = ys + dy, xs + dx
        inside = (qy >= 0) & (qy < 6) & (qx >= 0) & (qx < 7)
        # the segment touches column 3 exactly when its endpoints' columns span it
        crosses = (np.minimum(xs, qx) <= 3) & (np.maximum(xs, qx) >= 3)
        expected = (inside & ~crosses).astype(np.float32)
        np.testing.assert_array_equal(affinity[k].numpy(), expected, err_msg=f"offset {(dy, dx)}")


def test_path_affinities_take_the_largest_value_on_the_segment():
    boundary = torch.zeros(1, 5)
    boundary[0, 2] = 0.25
    affinity = path_affinities(boundary, [[0, 4], [0, 1]])
    assert affinity[0, 0, 0] == pytest.approx(0.75)
    np.testing.assert_allclose(affinity[1, 0].numpy(), [1.0, 0.75, 0.75, 1.0, 0.0])


def test_transition_rows_sum_to_one_and_weights_are_symmetric():
    torch.manual_seed(0)
    offsets = neighbor_offsets(3)
    boundary = torch.rand(5, 6)
    affinities = path_affinities(boundary, offsets)
    transition = transition_matrix(affinities, offsets, beta=2.0)
    assert transition.layout == torch.sparse_csr
    dense = transition.to_dense()
    np.testing.assert_allclose(dense.sum(1).numpy(), np.ones(30), atol=1e-6)
    # row-normalised W = D^-1 S with S symmetric: undo the scaling with each row's self-loop weight 1
    symmetric = dense / dense.diagonal()[:, None]
    np.testing.assert_allclose(symmetric.numpy(), symmetric.t().numpy(), atol=1e-6)
    # each pixel is linked to exactly its in-image neighbours (plus itself), nothing farther
    y, x = torch.div(torch.arange(30), 6, rounding_mode="floor"), torch.arange(30) % 6
    distance = (y[:, None] - y[None]) ** 2 + (x[:, None] - x[None]) ** 2
    assert torch.all(dense[distance >= 9] == 0)
    crow, col = transition.crow_indices(), transition.col_indices()
    for row in range(30):
        columns = col[crow[row]:crow[row + 1]]
        assert torch.all(columns[1:] > columns[:-1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_walk_matches_dense_squaring(seed):
    generator = torch.Generator().manual_seed(seed)
    offsets = neighbor_offsets(3)
    boundary = torch.rand(7, 9, generator=generator)
    affinities = path_affinities(boundary, offsets)
    scores = torch.rand(3, 7, 9, generator=generator)
    logt = 3
    sparse = random_walk(scores, transition_matrix(affinities, offsets, beta=8.0), steps=2 ** logt)
    dense = random_walk_dense_reference(scores, affinities, offsets, beta=8.0, logt=logt)
    assert sparse.shape == (3, 7, 9)
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=0)


def test_walk_stays_on_its_side_of_a_wall():
    boundary = torch.zeros(8, 10)
    boundary[:, 4] = 1.0
    offsets = neighbor_offsets(4)
    transition = transition_matrix(path_affinities(boundary, offsets), offsets, beta=8.0)
    scores = torch.zeros(2, 8, 10)
    scores[0, 3, 1] = 1.0   # one seed left of the wall
    scores[1, :, 6:] = 1.0  # a class filling the right side
    out = random_walk(scores, transition, steps=50)
    assert out[0, :, 4:].abs().max() < 1e-6
    assert out[0, :, :4].min() > 0  # the seed spread over the whole left side
    assert out[1, :, :4].abs().max() < 1e-6
    assert out[1, :, 5:].min() > 0.5
