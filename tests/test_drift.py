"""Drift: two-sample distances against brute-force definitions, the drift reference and the edge score monitor."""

import json

import numpy as np
import pytest

from scada_tcn.runtime.drift import DriftError, ScoreDriftMonitor, ks_to_quantiles
from scada_tcn.trainer.evaluation.drift_report import (
    DriftReference,
    feature_drift,
    ks_statistic,
    median_bandwidth,
    mmd2_unbiased,
    wasserstein_1d,
)

RNG = np.random.default_rng(0)
A = RNG.standard_normal(400)


def _ks_brute(a, b):
    z = np.concatenate([a, b])
    return np.abs((a[:, None] <= z).mean(0) - (b[:, None] <= z).mean(0)).max()


# --- KS and Wasserstein -----------------------------------------------------------------------------------------


def test_ks_hand_computed_and_brute_force_with_ties():
    # F_a - F_b at 1: 1/3 - 0, 2: 2/3 - 1/4, 3: 1 - 1/2, 4: 1 - 3/4 -> 1/2 at 3
    assert ks_statistic([1, 2, 3], [2, 3, 4, 5]) == 0.5
    assert ks_statistic(A, A) == 0.0 and ks_statistic(A, A[::-1]) == 0.0
    rng = np.random.default_rng(1)
    for _ in range(5):
        a, b = rng.integers(0, 6, 30).astype(float), rng.integers(1, 8, 17).astype(float)  # many ties
        assert ks_statistic(a, b) == pytest.approx(_ks_brute(a, b), abs=1e-15)
    assert np.isnan(ks_statistic([], [1.0]))


def test_wasserstein_hand_computed_and_brute_force():
    assert wasserstein_1d([0, 1], [2, 3]) == 2.0
    assert wasserstein_1d([0.0], [0.0, 2.0]) == 1.0  # |1 - 1/2| over [0, 2)
    assert wasserstein_1d(A, A) == 0.0
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal(50), rng.integers(0, 3, 50).astype(float)
    # equal sizes: W1 is the mean distance between the sorted samples
    assert wasserstein_1d(a, b) == pytest.approx(np.abs(np.sort(a) - np.sort(b)).mean(), rel=1e-12)
    assert wasserstein_1d(A, A + 0.7) == pytest.approx(0.7, rel=1e-12)
    with pytest.raises(DriftError, match="must be finite"):
        wasserstein_1d([np.nan], [1.0])


# --- MMD --------------------------------------------------------------------------------------------------------


def test_mmd2_unbiased_matches_its_definition_on_a_small_sample():
    rng = np.random.default_rng(3)
    X, Y, bw = rng.standard_normal((5, 2)), rng.standard_normal((4, 2)) + 0.3, 0.9

    def k(u, v):
        return np.exp(-np.sum((u - v) ** 2) / (2 * bw**2))

    n, m = len(X), len(Y)
    xx = sum(k(X[i], X[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(Y[i], Y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x, y) for x in X for y in Y) / (n * m)
    assert mmd2_unbiased(X, Y, bandwidth=bw) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    Z = np.concatenate([X, Y])
    d = [np.linalg.norm(Z[i] - Z[j]) for i in range(len(Z)) for j in range(i + 1, len(Z))]
    assert median_bandwidth(Z) == pytest.approx(np.median(d), rel=1e-12)


def test_mmd2_near_zero_on_two_halves_and_positive_under_shift():
    Z = np.random.default_rng(4).standard_normal((1000, 3))
    # under no drift the estimate is centred on 0 with a std of ~1e-3 at 500 rows per side
    assert abs(mmd2_unbiased(Z[:500], Z[500:])) < 5e-3
    assert mmd2_unbiased(Z[:500], Z[500:] + 0.5) > 0.03
    assert np.isnan(mmd2_unbiased(Z[:1], Z[1:5]))


def test_mmd2_subsampling_is_seeded():
    Z = np.random.default_rng(5).standard_normal((600, 2))
    a = mmd2_unbiased(Z[:300], Z[300:] + 0.2, max_rows=100, seed=7)
    assert a == mmd2_unbiased(Z[:300], Z[300:] + 0.2, max_rows=100, seed=7)
    assert a != mmd2_unbiased(Z[:300], Z[300:] + 0.2, max_rows=100, seed=8)


# --- per-feature drift and the reference --------------------------------------------------------------------------


def test_feature_drift_flags_the_shifted_feature_and_ignores_missing_values():
    rng = np.random.default_rng(6)
    ref, cur = rng.standard_normal((500, 2)), rng.standard_normal((400, 2))
    cur[:, 1] += 1.0
    mask_cur = np.ones_like(cur)
    mask_cur[:50, 0] = 0
    cur_dirty = cur.copy()
    cur_dirty[:50, 0] = np.nan  # never read under mask 0
    out = feature_drift(ref, cur_dirty, ["a", "b"], mask_cur=mask_cur, ks_threshold=0.2)
    assert out["drifted"] == ["b"]
    a = out["per_feature"]["a"]
    assert a["ks"] == ks_statistic(ref[:, 0], cur[50:, 0]) and a["n_ref"] == 500 and a["n_cur"] == 350
    assert a["wasserstein"] == wasserstein_1d(ref[:, 0], cur[50:, 0])
    assert out["per_feature"]["b"]["wasserstein"] == pytest.approx(1.0, abs=0.15)
    with pytest.raises(DriftError, match="mark missing values with the mask"):
        feature_drift(ref, cur_dirty, ["a", "b"])


def test_drift_reference_round_trip_and_ks():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2000, 2))
    ref = DriftReference.fit(x, ["a", "b"])
    assert ref.quantiles[:, 0].tolist() == x.min(0).tolist() and ref.quantiles[:, -1].tolist() == x.max(0).tolist()
    back = DriftReference.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert back.to_dict() == ref.to_dict()
    same = ref.ks(rng.standard_normal((2000, 2)))
    assert max(same.values()) < 0.05  # ~1.36 / sqrt(2000) = 0.03 for a fresh sample of the same law
    shifted = ref.ks(rng.standard_normal((2000, 2)) + [0.0, 1.0])
    assert shifted["a"] < 0.05 and shifted["b"] > 0.3


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(extra=1), r"unknown keys \[.extra.\], missing keys \[\]"),
        (lambda d: d.pop("std"), r"unknown keys \[\], missing keys \[.std.\]"),
        (lambda d: d["quantiles"][0].reverse(), "non-decreasing"),
        (lambda d: d["mean"].__setitem__(0, float("nan")), "mean must be finite"),
        (lambda d: d.update(n=[1.5, 2.0]), "n must hold integers"),
        (lambda d: d.update(levels=d["levels"][:-1]), "quantiles must be"),
        (lambda d: d.update(feature_names=["a", "a"]), "distinct"),
    ],
)
def test_drift_reference_from_dict_is_strict(change, message):
    d = DriftReference.fit(np.arange(20.0).reshape(10, 2), ["a", "b"], levels=[0.0, 0.5, 1.0]).to_dict()
    change(d)
    with pytest.raises(DriftError, match=message):
        DriftReference.from_dict(d)


# --- the edge monitor -------------------------------------------------------------------------------------------


def test_ks_to_quantiles_hand_computed_with_an_atom():
    assert ks_to_quantiles([0.1, 0.2, 0.3, 0.4], [0, 1], [0, 1]) == pytest.approx(0.6)  # uniform: 1 - G(0.4)
    # reference: an atom of 1/2 at 0, then uniform on (0, 1] with density 1/2
    levels, values = [0.0, 0.5, 1.0], [0.0, 0.0, 1.0]
    assert ks_to_quantiles([0, 0, 0, 1], levels, values) == 0.25  # F_n(0) = 3/4 vs G(0) = 1/2
    assert ks_to_quantiles([0.5], levels, values) == 0.75  # just below 0.5: F_n = 0 vs G = 3/4
    # levels not reaching 0 and 1: the outer mass sits on the end quantiles
    assert ks_to_quantiles([2.0], [0.1, 0.9], [1.0, 3.0]) == 0.5  # G(2) = 0.5
    assert np.isnan(ks_to_quantiles([], [0, 1], [0, 1]))


def test_ks_to_quantiles_matches_a_dense_grid():
    # no atoms here, so G is np.interp; the grid holds every sample value and a point just below each
    rng = np.random.default_rng(8)
    x = rng.standard_normal(200)
    levels = np.linspace(0, 1, 21)
    values = np.quantile(rng.standard_normal(5000) * 1.2, levels)
    grid = np.sort(np.concatenate([np.linspace(-6, 6, 100_001), x, x - 1e-9]))
    brute = np.abs(np.searchsorted(np.sort(x), grid, "right") / x.size - np.interp(grid, values, levels)).max()
    assert ks_to_quantiles(x, levels, values) == pytest.approx(brute, abs=1e-6)


def test_monitor_matches_batch_at_every_step_and_state_round_trips():
    levels = np.linspace(0, 1, 11)
    values = np.quantile(np.random.default_rng(9).exponential(size=1000), levels)
    scores = np.random.default_rng(10).exponential(size=40) * 1.5
    kept_levels, kept_values = levels.copy(), values.copy()
    m = ScoreDriftMonitor(levels, values, window=8)
    assert np.isnan(m.get()["ks"]) and m.get()["n"] == 0
    for i, s in enumerate(scores):
        m.update(s)
        if i == 20:
            clone = ScoreDriftMonitor(levels, values, window=8)
            clone.load_state_dict(m.state_dict())
        got = m.get()
        assert got == {"ks": ks_to_quantiles(scores[max(0, i - 7) : i + 1], levels, values), "n": min(i + 1, 8)}
    for s in scores[21:]:
        clone.update(s)
    assert clone.get() == m.get() and clone.state_dict()["values"].tolist() == scores[-8:].tolist()
    assert np.array_equal(levels, kept_levels) and np.array_equal(values, kept_values)


def test_monitor_refuses_bad_parameters_and_state():
    with pytest.raises(DriftError, match="window must be an integer >= 1"):
        ScoreDriftMonitor([0, 1], [0, 1], window=0)
    with pytest.raises(DriftError, match="strictly increasing"):
        ScoreDriftMonitor([0.5, 0.5], [0, 1], window=3)
    with pytest.raises(DriftError, match="non-decreasing"):
        ScoreDriftMonitor([0, 1], [1, 0], window=3)
    m = ScoreDriftMonitor([0, 1], [0, 1], window=3)
    with pytest.raises(DriftError, match="finite"):
        m.update(float("nan"))
    with pytest.raises(DriftError, match="at most window=3"):
        m.load_state_dict({"values": [0.1, 0.2, 0.3, 0.4]})
    with pytest.raises(DriftError, match="expected keys"):
        m.load_state_dict({"values": [], "pos": 0})


def test_monitor_update_many_equals_update_one_by_one():
    rng = np.random.default_rng(3)
    levels, values = [0.0, 0.5, 1.0], [0.0, 1.0, 3.0]
    one, many = ScoreDriftMonitor(levels, values, window=7), ScoreDriftMonitor(levels, values, window=7)
    for size in (0, 3, 1, 9, 5, 20, 2):  # batches shorter and longer than the window
        batch = rng.exponential(1.0, size)
        for v in batch:
            one.update(v)
        many.update_many(batch)
        np.testing.assert_equal(one.get(), many.get())  # NaN-aware: both NaN before any score
        np.testing.assert_array_equal(one.state_dict()["values"], many.state_dict()["values"])
        assert one.pushed == many.pushed
    assert many.pushed == 40  # every score pushed counts, those beyond the window too
    with pytest.raises(DriftError, match="finite"):
        many.update_many([1.0, float("nan")])
