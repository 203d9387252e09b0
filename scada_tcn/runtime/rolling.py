"""Exact causal rolling mean and population std (ddof=0) over the last `w` steps.

Contract
--------
* Window at step t covers steps t-w+1 .. t (causal: nothing after t is used).
* Strict present: the window is valid (`ok[t]`) iff t >= w-1 and every step in it is present.
  Invalid windows give NaN mean and std.
* Exact on offset data: the statistics are built from shifted Welford recurrences (values minus an
  element of the same window) and Chan's parallel merge, never from differences of running sums
  of the values, so a series like 1e6 + 1e-3 noise keeps full relative precision in its std, and
  a constant window gives std exactly 0 and mean exactly the constant.

Two entry points share these semantics:

* `rolling_mean_std(x (T,), present (T,), w)` - batch, O(T) work for any w. The series is cut into
  blocks of w steps; within-block suffix and prefix (mean, M2) are built by Welford recurrences
  vectorised across blocks (a Python loop over the w offsets only), and each window is the suffix
  of one block merged with the prefix of the next.
* `window_mean_std(buf (..., w))` - incremental, shifted Welford over the last axis of a
  ring-buffer snapshot, vectorised over leading axes (e.g. a fleet of turbines). NaN anywhere in
  a window gives NaN for that window.

Refused (InputError): non-1-D or mismatched inputs, non-bool `present`, a present value that is
not finite, a window that is not a positive integer.
"""

from __future__ import annotations

import numpy as np

from scada_tcn.runtime.errors import InputError

__all__ = ["rolling_mean_std", "window_mean_std"]


def _check_window(w: int) -> int:
    if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1:
        raise InputError(f"rolling window must be a positive integer, got {w!r}")
    return int(w)


def _block_stats(blocks: np.ndarray, reverse: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shifted Welford (shift, mean, M2) of the prefixes (or suffixes) of each row of `blocks` (nb, w).

    Prefix layout: column k holds the first k elements (k = 0 .. w-1; column 0 is empty), shifted
    by the block's first element. Suffix layout: column k holds the elements k .. w-1, shifted by
    the block's last element. The shift element belongs to every window that uses the statistic,
    so a constant window works on exact zeros.
    """
    nb, w = blocks.shape
    shift = blocks[:, -1] if reverse else blocks[:, 0]
    mean_out = np.zeros((nb, w))
    m2_out = np.zeros((nb, w))
    mean = np.zeros(nb)
    m2 = np.zeros(nb)
    offsets = range(w - 1, -1, -1) if reverse else range(w - 1)
    for n, k in enumerate(offsets, start=1):
        xk = blocks[:, k] - shift
        d = xk - mean
        mean = mean + d / n
        m2 = m2 + d * (xk - mean)
        col = k if reverse else k + 1
        mean_out[:, col] = mean
        m2_out[:, col] = m2
    return shift, mean_out, m2_out


def rolling_mean_std(x: np.ndarray, present: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Causal strict-present rolling (mean, std, ok) of `x` over the last `w` steps, each of shape (T,).

    `mean` and `std` are float64 and NaN where `ok` is False. Values at steps where `present` is
    False are ignored (they may be NaN).
    """
    w = _check_window(w)
    x = np.asarray(x)
    present = np.asarray(present)
    if x.ndim != 1 or present.shape != x.shape:
        raise InputError(
            f"rolling_mean_std: x and present must be 1-D of equal length, got {x.shape} and {present.shape}"
        )
    if present.dtype != np.bool_:
        raise InputError(f"rolling_mean_std: present must be bool, got {present.dtype}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"rolling_mean_std: x must be a float array, got {x.dtype}")
    xv = np.where(present, x, 0.0).astype(np.float64, copy=False)
    if not np.isfinite(xv).all():
        raise InputError("rolling_mean_std: a step marked present holds a non-finite value")
    t_len = x.shape[0]
    mean = np.full(t_len, np.nan)
    std = np.full(t_len, np.nan)
    ok = np.zeros(t_len, dtype=bool)
    if t_len < w:
        return mean, std, ok

    # Window ending at t is valid iff it holds no missing step (missing values are 0 from here on).
    n_missing = np.concatenate(([0], np.cumsum(~present, dtype=np.int64)))
    ok[w - 1 :] = (n_missing[w:] - n_missing[:-w]) == 0

    # Blocks of w steps, plus one block of padding so that every window start s has a next block.
    nb = -(-t_len // w) + 1
    blocks = np.zeros(nb * w)
    blocks[:t_len] = xv
    blocks = blocks.reshape(nb, w)
    suf_shift, suf_mean, suf_m2 = _block_stats(blocks, reverse=True)
    pre_shift, pre_mean, pre_m2 = _block_stats(blocks, reverse=False)

    # Window starting at s = b*w + o (row b, column o of the (nb-1, w) grids below): the suffix of
    # block b from offset o (w-o elements) merged with the first o elements of block b+1 by Chan's
    # formula. Column o = 0 is the whole block b; the next block's shift is then not used (causal).
    o = np.arange(w, dtype=np.float64)
    ka = suf_shift[:-1, None]
    ma, m2a = suf_mean[:-1], suf_m2[:-1]
    mb, m2b = pre_mean[1:], pre_m2[1:]
    delta = (mb - ma) + (pre_shift[1:, None] - ka)
    delta[:, 0] = 0.0
    win_mean = ka + (ma + delta * (o / w))
    win_m2 = m2a + m2b + delta * delta * ((w - o) * o / w)
    np.maximum(win_m2, 0.0, out=win_m2)

    n_win = t_len - w + 1
    mean[w - 1 :] = win_mean.ravel()[:n_win]
    std[w - 1 :] = np.sqrt(win_m2.ravel()[:n_win] / w)
    np.copyto(mean, np.nan, where=~ok)
    np.copyto(std, np.nan, where=~ok)
    return mean, std, ok


def window_mean_std(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, population std) over the last axis of `buf` (..., w), two-pass; shapes (...).

    NaN anywhere in a window propagates to its mean and std.
    """
    buf = np.asarray(buf)
    if buf.ndim < 1 or buf.shape[-1] < 1:
        raise InputError(f"window_mean_std: need a non-empty last axis, got shape {buf.shape}")
    if not np.issubdtype(buf.dtype, np.floating):
        raise InputError(f"window_mean_std: buf must be a float array, got {buf.dtype}")
    shift = buf[..., -1:].astype(np.float64)
    x = buf - shift  # shifted by the newest value: no cancellation for a large offset
    mean = x.mean(axis=-1, keepdims=True)
    d = x - mean
    m2 = np.einsum("...i,...i->...", d, d)  # two passes over a short window, vectorised
    return shift[..., 0] + mean[..., 0], np.sqrt(m2 / buf.shape[-1])
