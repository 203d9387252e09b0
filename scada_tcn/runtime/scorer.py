"""The onnxruntime scorer: one window batch -> clean-pass outputs and the anomaly score, from a loaded bundle.

Contract
--------
`OnnxScorer(bundle, intra_op_threads=1, inter_op_threads=1)` opens both graphs of the bundle through
`runtime.bundle.open_session` (explicit session options, graph optimisation on, I/O checked against the
bundle's dims). One intra-op thread is the default: for single windows of a model this size, more threads only
add synchronisation.

`score(X, M_miss, Flags)` takes float32 arrays X (B, L, F), M_miss (B, L, F) (1 present, 0 missing) and
Flags (B, L, R), runs each graph once on exactly those arrays, and returns a `ScoreBatch`. Everything else lives
in the exported graphs: the model input (missing values filled, masks and flags concatenated), the score math and
the fault probabilities. Refused with InputError: wrong ndim, shape or dtype, or batches that disagree. Inputs
are not mutated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scada_tcn.runtime.bundle import Bundle, open_session
from scada_tcn.runtime.errors import InputError

__all__ = ["OnnxScorer", "ScoreBatch"]


@dataclass(frozen=True)
class ScoreBatch:
    """Outputs for B windows. Per-signal bundles fill `resid`, window-mean bundles `s_now` .. `E`; a clean-pass
    field is None when the bundle's model has no such head."""

    Y_hat: np.ndarray | None  # (B, K, F)
    fault_prob: np.ndarray | None  # (B, C): softmax, or sigmoid per class for a multilabel head
    rul: np.ndarray | None  # (B,)
    resid: np.ndarray | None = None  # (B, F) float32: newest-step residual in normal-scale units (per_signal)
    pred: np.ndarray | None = None  # (B, F) float32: the newest step's prediction, scaled units (per_signal)
    s_now: np.ndarray | None = None  # (B,) float32 (window_mean)
    feat_contrib: np.ndarray | None = None  # (B, F) float32, sums to s_now
    top_idx: np.ndarray | None = None  # (B, topn) int64, largest contribution first
    E: np.ndarray | None = None  # (B, L, F) float32, 0 where missing


class OnnxScorer:
    """Both graphs of a bundle in onnxruntime; see the module docstring."""

    def __init__(self, bundle: Bundle, intra_op_threads: int = 1, inter_op_threads: int = 1) -> None:
        self.bundle = bundle
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        self._clean = open_session(bundle, "clean", intra_op_threads, inter_op_threads)
        self._scoring = open_session(bundle, "scoring", intra_op_threads, inter_op_threads)

    def _check(self, X: np.ndarray, M_miss: np.ndarray, Flags: np.ndarray) -> None:
        d = self.bundle.dims
        want = {"X": (d.L, d.F), "M_miss": (d.L, d.F), "Flags": (d.L, d.R)}
        B = None
        for name, a in (("X", X), ("M_miss", M_miss), ("Flags", Flags)):
            if not isinstance(a, np.ndarray) or a.dtype != np.float32:
                got = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
                raise InputError(f"OnnxScorer.score: {name} must be a float32 numpy array, got {got}")
            if a.ndim != 3 or a.shape[1:] != want[name] or a.shape[0] < 1:
                raise InputError(
                    f"OnnxScorer.score: {name} must be (B, {want[name][0]}, {want[name][1]}) with B >= 1, got {a.shape}"
                )
            if B is not None and a.shape[0] != B:
                raise InputError(f"OnnxScorer.score: {name} has batch {a.shape[0]}, X has {B}")
            B = a.shape[0]

    def clean(self, X: np.ndarray, M_miss: np.ndarray, Flags: np.ndarray) -> dict[str, np.ndarray]:
        """The clean graph alone on B windows: its outputs by name (`Bundle.clean_outputs`)."""
        self._check(X, M_miss, Flags)
        return dict(zip(self.bundle.clean_outputs, self._clean.run(None, {"X": X, "M_miss": M_miss, "Flags": Flags})))

    def score(self, X: np.ndarray, M_miss: np.ndarray, Flags: np.ndarray) -> ScoreBatch:
        """Score B windows: one call of the scoring graph and one of the clean graph."""
        clean = self.clean(X, M_miss, Flags)
        feeds = {"X": X, "M_miss": M_miss, "Flags": Flags}
        scoring = dict(zip((o.name for o in self._scoring.get_outputs()), self._scoring.run(None, feeds)))
        rul = clean["rul"][:, 0] if "rul" in clean else None
        return ScoreBatch(Y_hat=clean.get("Y_hat"), fault_prob=clean.get("fault_prob"), rul=rul, **scoring)
