"""Fleet-relative scores (runtime.peers) against a brute-force median, on hand-built and random fleets."""

import numpy as np
import pytest

from scada_tcn.runtime.peers import fleet_relative, median_of_all, median_of_others


def _brute(S: np.ndarray) -> np.ndarray:
    out = np.full(S.shape, np.nan)
    for i, row in enumerate(S):
        for j, v in enumerate(row):
            others = np.delete(row, j)
            others = others[np.isfinite(others)]
            if np.isfinite(v) and others.size:
                out[i, j] = np.median(others)
    return out


def test_hand_built_rows():
    S = np.array([[1.0, 2.0, 10.0], [5.0, np.nan, 7.0], [3.0, np.nan, np.nan], [2.0, 2.0, 2.0]])
    want = np.array([[6.0, 5.5, 1.5], [7.0, np.nan, 5.0], [np.nan] * 3, [2.0, 2.0, 2.0]])
    np.testing.assert_array_equal(median_of_others(S), want)


@pytest.mark.parametrize("T", [1, 2, 3, 4, 7, 12])
def test_random_fleets_with_gaps_and_ties(T):
    rng = np.random.default_rng(T)
    S = rng.integers(0, 5, size=(300, T)).astype(float)  # many ties
    S[rng.random(S.shape) < 0.3] = np.nan
    np.testing.assert_allclose(median_of_others(S), _brute(S), rtol=0, atol=0)


@pytest.mark.parametrize("T", [1, 2, 3, 4, 7, 12])
def test_median_of_all_includes_the_entry_itself(T):
    rng = np.random.default_rng(100 + T)
    S = rng.integers(0, 5, size=(300, T)).astype(float)
    S[rng.random(S.shape) < 0.3] = np.nan
    want = np.array([[np.median(r[np.isfinite(r)]) if np.isfinite(v) else np.nan for v in r] for r in S])
    np.testing.assert_array_equal(median_of_all(S), want)


def test_one_runaway_turbine_moves_its_two_peers_median_of_others_but_not_the_median_of_all():
    """Three turbines, one running away: the others' median of each healthy one is the mean of the runaway and the
    other healthy turbine; the median of all three stays between the healthy two."""
    S = np.array([[0.2, -0.1, 50.0], [0.0, 0.3, -40.0]])
    healthy = S[:, :2]
    assert (np.abs(median_of_others(S)[:, :2]) > 19).all()
    base = median_of_all(S)[:, :2]
    assert ((base >= healthy.min(axis=1, keepdims=True)) & (base <= healthy.max(axis=1, keepdims=True))).all()
    np.testing.assert_array_equal(median_of_all(S)[:, 2], [0.2, 0.0])  # the runaway's own: still far from it


def test_flat_windows_keyed_by_step():
    steps = np.array([10, 10, 10, 20, 20, 30])
    scores = np.array([1.0, 2.0, 10.0, 4.0, 9.0, 3.0])
    rel, peers = fleet_relative(scores, steps, np.ones(6, bool), min_peers=1)
    np.testing.assert_array_equal(rel, [1.0 - 6.0, 2.0 - 5.5, 10.0 - 1.5, 4.0 - 9.0, 9.0 - 4.0, np.nan])
    np.testing.assert_array_equal(peers, [2, 2, 2, 1, 1, 0])
    rel2, _ = fleet_relative(scores, steps, np.ones(6, bool), min_peers=2)
    assert np.isnan(rel2[3:]).all() and np.isfinite(rel2[:3]).all()


def test_ineligible_windows_are_neither_scored_nor_peers():
    steps = np.array([10, 10, 10])
    eligible = np.array([True, True, False])
    rel, peers = fleet_relative(np.array([1.0, 2.0, 1e6]), steps, eligible, 1)
    np.testing.assert_array_equal(rel, [-1.0, 1.0, np.nan])
    np.testing.assert_array_equal(peers, [1, 1, 2])


def test_order_of_windows_does_not_matter():
    rng = np.random.default_rng(0)
    steps = rng.integers(0, 50, 400)
    scores = rng.random(400)
    eligible = rng.random(400) > 0.2
    rel, peers = fleet_relative(scores, steps, eligible, 1)
    p = rng.permutation(400)
    rel_p, peers_p = fleet_relative(scores[p], steps[p], eligible[p], 1)
    np.testing.assert_array_equal(rel_p, rel[p])
    np.testing.assert_array_equal(peers_p, peers[p])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="min_peers"):
        fleet_relative(np.ones(2), np.zeros(2), np.ones(2, bool), 0)
    with pytest.raises(ValueError, match="finite"):
        fleet_relative(np.array([1.0, np.nan]), np.zeros(2), np.ones(2, bool), 1)
    with pytest.raises(ValueError, match="shapes"):
        fleet_relative(np.ones(2), np.zeros(3), np.ones(2, bool), 1)
