"""runtime.rolling: exact causal strict-present rolling mean/std, batch and incremental."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from scada_tcn.runtime.errors import InputError
from scada_tcn.runtime.rolling import rolling_mean_std, window_mean_std


def _naive_cumsum(x: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The method we must NOT use: differences of running sums of x and x**2."""
    c1 = np.concatenate(([0.0], np.cumsum(x)))
    c2 = np.concatenate(([0.0], np.cumsum(x * x)))
    mean = (c1[w:] - c1[:-w]) / w
    var = (c2[w:] - c2[:-w]) / w - mean * mean
    return mean, np.sqrt(np.maximum(var, 0.0))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.nanmax(np.abs(a - b) / np.abs(b)))


@pytest.mark.parametrize(
    ("offset", "noise"),
    [(50.0, 0.01), (1500.0, 0.05), (1e6, 1e-3)],
    ids=["temperature-like", "generator-speed-like", "1e6+1e-3"],
)
@pytest.mark.parametrize("w", [6, 36, 144])
def test_offset_data_exact_where_naive_cumsum_fails(offset: float, noise: float, w: int) -> None:
    rng = np.random.default_rng(7)
    x = offset + noise * rng.standard_normal(6000)
    shifted = x - offset  # exact (Sterbenz): the well-conditioned series pandas gets right
    assert np.array_equal(shifted + offset, x)
    ref_mean = pd.Series(shifted).rolling(w).mean().to_numpy() + offset
    ref_std = pd.Series(shifted).rolling(w).std(ddof=0).to_numpy()

    mean, std, ok = rolling_mean_std(x, np.ones(x.size, bool), w)
    assert ok[w - 1 :].all() and not ok[: w - 1].any()
    assert _rel(mean, ref_mean) < 1e-12
    assert _rel(std, ref_std) < 1e-9

    naive_mean, naive_std = _naive_cumsum(x, w)
    assert _rel(naive_std, ref_std[w - 1 :]) > 1e-6  # visibly broken: >1000x our tolerance
    # pandas on the raw (offset) series is itself inexact there (up to ~1e-4 relative on 1e6+1e-3):
    # we are never less accurate than it
    pd_err = _rel(pd.Series(x).rolling(w).std(ddof=0).to_numpy(), ref_std)
    assert _rel(std, ref_std) <= max(pd_err, 1e-12)


@pytest.mark.parametrize("c", [0.1, 49.99, 1500.3, -7.25, 1e6 + 0.001, 0.0])
def test_constant_windows_give_exact_mean_and_zero_std(c: float) -> None:
    rng = np.random.default_rng(1)
    x = 50 + rng.standard_normal(400)
    x[100:260] = c  # frozen stretch crossing several block boundaries for every w below
    for w in (1, 5, 6, 36, 144):
        mean, std, ok = rolling_mean_std(x, np.ones(x.size, bool), w)
        inside = np.arange(100 + w - 1, 260)
        assert np.all(std[inside] == 0.0)
        assert np.all(mean[inside] == c)
        m, s = window_mean_std(sliding_window_view(x, w)[inside - w + 1])
        assert np.all(s == 0.0) and np.all(m == c)


def test_strict_present_and_warmup_against_pandas() -> None:
    rng = np.random.default_rng(3)
    x = 20 + rng.standard_normal(3000)
    x[rng.random(x.size) < 0.03] = np.nan
    x[1200:1500] = np.nan  # long gap
    present = ~np.isnan(x)
    for w in (1, 2, 6, 37, 144, 5000):
        mean, std, ok = rolling_mean_std(x, present, w)
        ref = pd.Series(x).rolling(w, min_periods=w)
        ref_mean, ref_std = ref.mean().to_numpy(), ref.std(ddof=0).to_numpy()
        np.testing.assert_array_equal(ok, ~np.isnan(ref_mean))
        np.testing.assert_array_equal(np.isnan(mean), ~ok)
        np.testing.assert_array_equal(np.isnan(std), ~ok)
        assert not ok[: w - 1].any()
        np.testing.assert_allclose(mean[ok], ref_mean[ok], rtol=1e-12)
        np.testing.assert_allclose(std[ok], ref_std[ok], rtol=1e-9)


def test_single_missing_step_masks_exactly_the_windows_that_hold_it() -> None:
    x = np.arange(50, dtype=float)
    present = np.ones(50, bool)
    present[20] = False
    x[20] = np.nan
    _, _, ok = rolling_mean_std(x, present, 6)
    expected = np.ones(50, bool)
    expected[:5] = False
    expected[20:26] = False
    np.testing.assert_array_equal(ok, expected)


def test_no_lookahead_bitwise() -> None:
    rng = np.random.default_rng(11)
    x = 1500 + rng.standard_normal(2000)
    present = rng.random(x.size) > 0.02
    for w in (6, 36, 144):
        base = rolling_mean_std(x, present, w)
        for t in rng.integers(0, x.size - 1, 20):
            x2, p2 = x.copy(), present.copy()
            x2[t + 1 :] = rng.uniform(-1e5, 1e5, x.size - t - 1)
            p2[t + 1 :] = rng.random(x.size - t - 1) > 0.5
            pert = rolling_mean_std(x2, p2, w)
            for a, b in zip(base, pert):
                np.testing.assert_array_equal(a[: t + 1], b[: t + 1])


def test_window_mean_std_vectorised_over_leading_axes() -> None:
    rng = np.random.default_rng(5)
    buf = 1e6 + 1e-3 * rng.standard_normal((3, 4, 36))
    buf[1, 2, 7] = np.nan
    mean, std = window_mean_std(buf)
    assert mean.shape == std.shape == (3, 4)
    shifted = buf - 1e6
    ref_mean, ref_std = shifted.mean(axis=-1) + 1e6, shifted.std(axis=-1)
    ok = ~np.isnan(buf).any(axis=-1)
    np.testing.assert_array_equal(np.isnan(mean), ~ok)
    np.testing.assert_array_equal(np.isnan(std), ~ok)
    assert _rel(mean[ok], ref_mean[ok]) < 1e-12
    assert _rel(std[ok], ref_std[ok]) < 1e-9


def test_batch_and_incremental_agree() -> None:
    rng = np.random.default_rng(9)
    x = 50 + 0.01 * rng.standard_normal(3000)
    x[500:700] = 50.0
    for w in (6, 36, 144):
        mean, std, ok = rolling_mean_std(x, np.ones(x.size, bool), w)
        m, s = window_mean_std(sliding_window_view(x, w))
        np.testing.assert_allclose(m, mean[w - 1 :], rtol=1e-12)
        np.testing.assert_allclose(s, std[w - 1 :], rtol=1e-9)
        np.testing.assert_array_equal(s == 0.0, std[w - 1 :] == 0.0)


def test_inputs_not_mutated() -> None:
    x = np.array([1.0, np.nan, 3.0, 4.0, 5.0, 6.0])
    present = ~np.isnan(x)
    xc, pc = x.copy(), present.copy()
    rolling_mean_std(x, present, 2)
    window_mean_std(x[None, 2:])
    np.testing.assert_array_equal(x, xc)
    np.testing.assert_array_equal(present, pc)


@pytest.mark.parametrize("w", [0, -3, 2.5, True, "6"])
def test_rejects_bad_window(w: object) -> None:
    with pytest.raises(InputError, match="window"):
        rolling_mean_std(np.ones(10), np.ones(10, bool), w)  # type: ignore[arg-type]


def test_rejects_bad_inputs() -> None:
    with pytest.raises(InputError, match="equal length"):
        rolling_mean_std(np.ones(10), np.ones(9, bool), 3)
    with pytest.raises(InputError, match="bool"):
        rolling_mean_std(np.ones(10), np.ones(10), 3)
    with pytest.raises(InputError, match="float"):
        rolling_mean_std(np.ones(10, dtype=int), np.ones(10, bool), 3)
    x = np.ones(10)
    x[4] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        rolling_mean_std(x, np.ones(10, bool), 3)
    with pytest.raises(InputError, match="last axis"):
        window_mean_std(np.ones((3, 0)))
