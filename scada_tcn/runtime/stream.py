"""The edge's streaming scorer: step.onnx driven one fleet step at a time, each turbine's layer state in rings.

A bundle with a step graph (`Bundle.stream`, see `runtime.bundle`) is scored without windows: each turbine keeps,
per convolution of the model, the last S = (k - 1) d inputs of every pass in a time-major ring
`(S, slots, P, channels)` (step tau at row tau mod S, tau = the step's end / dt; the graph's taps are rows of it,
`(B x P, channels)`, `trainer.model.streaming`), and with the fault head the last L - 1 clean hidden states.
`StreamScorer.step(slots, t, X, M_miss, Flags)` scores the newest step of B turbines that share the step index t (a
fleet step), writes the graph's new columns into their rings and returns the per-signal outputs and the clean-pass
heads for those B rows.

State: the convolution rings are a function of the last L inputs (the receptive field fits the window), which the
fleet keeps anyway (`runtime.fleet`), so they are not saved: `rebuild` steps a turbine's L-step window from
zeros, which reproduces exactly what the uninterrupted stream holds (`trainer.model.streaming`). The fault head's
ring of hidden states reaches further back and is part of `state_dict()`; the graph takes its sum, which a
`RingSum` keeps up to date a column at a time (`runtime.ring_sum`).

Cost: one graph call per fleet step, or per `MAX_CALL_TURBINES` turbines of a larger one (the numbers do not
depend on the batch); when the turbines stepping hold consecutive slots (every known turbine, or the part of a
fleet step that one loop iteration of the daemon took, as a farm's messages in slot order arrive), each tap is a
block of ring rows passed to onnxruntime as it is (a view, no copy) and each new column is written back as one
contiguous block; any other set of turbines gathers each turbine's P x channels block of a tap in one piece.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort

from scada_tcn.runtime.bundle import Bundle, StreamParams, open_session
from scada_tcn.runtime.errors import BundleError
from scada_tcn.runtime.ring_sum import RingSum
from scada_tcn.runtime.slots import kept_rows

__all__ = ["MAX_CALL_TURBINES", "StepOutputs", "StreamScorer", "make_scorer"]

# turbines per graph call: a fleet step of more is scored in calls of this many (1000 turbines in one call cost
# 16-16.6 us each on the 2-core machine's 2 MB L2, in calls of 200-250 13.7-13.9 us: the taps stay in cache)
MAX_CALL_TURBINES = 250


class StepOutputs(NamedTuple):
    """The outputs of one fleet step for B turbines (a head's field is None when the model has no such head)."""

    resid: np.ndarray  # (B, F) float32
    pred: np.ndarray  # (B, F) float32
    Y_hat: np.ndarray | None  # (B, K, F)
    fault_prob: np.ndarray | None  # (B, C)
    rul: np.ndarray | None  # (B,)


class StreamScorer:
    """Per-turbine layer state and the step graph; see the module docstring."""

    def __init__(self, session: ort.InferenceSession, stream: StreamParams, L: int, F: int, R: int) -> None:
        self.P, self.L, self.D, self.F, self.R = stream.passes, L, stream.hidden, F, R
        self.convs = stream.convs
        self.has_h = stream.h_ring
        if self.has_h and L < 2:
            raise BundleError(f"StreamScorer: the fault head pools the last L steps, a ring of L - 1 >= 1; L={L}")
        self.session = session
        self._outputs = [o.name for o in self.session.get_outputs()]
        self.n: int  # slots in use (0 .. n - 1): the rings hold exactly n turbines
        self.rings: list[np.ndarray]
        self.pool: RingSum | None  # with the fault head: its ring of the last L - 1 clean hidden states, its sum
        self.reset()

    @classmethod
    def from_bundle(cls, bundle: Bundle, intra_op_threads: int = 1) -> StreamScorer:
        """The streaming scorer of a bundle with a step graph (refused otherwise)."""
        if bundle.stream is None:
            raise BundleError("StreamScorer: this bundle has no step graph (stream is null); use the window scorer")
        d = bundle.dims
        return cls(open_session(bundle, "step", intra_op_threads), bundle.stream, d.L, d.F, d.R)

    def reset(self) -> None:
        """Forget every turbine (no slots, empty rings): a state refused part-way leaves no trace."""
        self.n = 0
        self.rings = [np.zeros((s, 0, self.P, c), np.float32) for c, s, _, _ in self.convs]
        self.pool = RingSum(self.L - 1, self.D) if self.has_h else None

    def _grow(self, n: int) -> None:
        """Room for slots 0 .. n - 1 (new turbines join a fleet step at a time: one reallocation per such step)."""
        if n <= self.n:
            return
        more = n - self.n
        self.rings = [np.concatenate([r, np.zeros((r.shape[0], more, *r.shape[2:]), np.float32)], axis=1)
                      for r in self.rings]  # fmt: skip
        if self.pool is not None:
            self.pool.grow(n)
        self.n = n

    def step(self, slots: np.ndarray, t: int, X: np.ndarray, M_miss: np.ndarray, Flags: np.ndarray) -> StepOutputs:
        """Score the step with index `t` of the turbines `slots` (distinct), X and M_miss (B, F), Flags (B, R)."""
        slots = np.asarray(slots, dtype=np.int64)
        B = slots.size
        if slots.ndim != 1 or (B and (slots.min() < 0 or np.unique(slots).size != B)):
            raise ValueError("StreamScorer.step: slots must be distinct integers >= 0 (one step per turbine)")
        if X.shape != (B, self.F) or M_miss.shape != (B, self.F) or Flags.shape != (B, self.R):
            raise ValueError(f"StreamScorer.step: X, M_miss (B={B}, F={self.F}), Flags (B, R={self.R}); got "
                             f"{X.shape}, {M_miss.shape}, {Flags.shape}")  # fmt: skip
        self._grow(int(slots.max()) + 1 if B else 0)
        run = B > 0 and int(slots[-1] - slots[0]) == B - 1 and bool((slots[1:] > slots[:-1]).all())  # no copies
        if B <= MAX_CALL_TURBINES:
            return self._call(slots, t, X, M_miss, Flags, run)
        parts = [self._call(slots[a : a + MAX_CALL_TURBINES], t, X[a : a + MAX_CALL_TURBINES],
                            M_miss[a : a + MAX_CALL_TURBINES], Flags[a : a + MAX_CALL_TURBINES], run)
                 for a in range(0, B, MAX_CALL_TURBINES)]  # fmt: skip
        return StepOutputs(*(None if p[0] is None else np.concatenate(p) for p in zip(*parts)))

    def _call(
        self, slots: np.ndarray, t: int, X: np.ndarray, M_miss: np.ndarray, Flags: np.ndarray, contiguous: bool
    ) -> StepOutputs:
        """One graph call for `slots`; `contiguous`: they are consecutive (slots[0], slots[0] + 1, ...), so their
        rows of every ring are one block, passed and written back as views."""
        turbines: slice | np.ndarray = slots
        if contiguous:
            first = int(slots[0]) if slots.size else 0
            turbines = slice(first, first + slots.size)
        B = slots.size
        feeds: dict[str, Any] = {
            "X": np.ascontiguousarray(X, np.float32),
            "M_miss": np.ascontiguousarray(M_miss, np.float32),
            "Flags": np.ascontiguousarray(Flags, np.float32),
        }
        for i, (r, (_, s, d, k)) in enumerate(zip(self.rings, self.convs)):
            for j in range(k - 1):  # the input at t - (k - 1 - j) d: a row of the ring (a view, or those of `sel`)
                feeds[f"tap_{i}_{j}"] = r[(t - (k - 1 - j) * d) % s, turbines].reshape(B * self.P, r.shape[-1])
        if self.pool is not None:
            feeds["h_sum"] = self.pool.total(turbines)
        out = dict(zip(self._outputs, self.session.run(None, feeds)))
        for i, (r, (_, s, _, _)) in enumerate(zip(self.rings, self.convs)):
            r[t % s, turbines] = out[f"col_{i}"].reshape(B, self.P, r.shape[-1])
        if self.pool is not None:
            self.pool.put(turbines, t % (self.L - 1), out["h"])
        return StepOutputs(out["resid"], out["pred"], out.get("Y_hat"), out.get("fault_prob"), out.get("rul"))

    def run_series(
        self, slots: np.ndarray, t0: int, X: np.ndarray, M_miss: np.ndarray, Flags: np.ndarray
    ) -> StepOutputs:
        """`step` over T consecutive steps t0, t0 + 1, ... of the turbines `slots`: X, M_miss (B, T, F), Flags
        (B, T, R) -> the outputs of every step, stacked on axis 1 ((B, T, ...); a missing head stays None)."""
        outs = [self.step(slots, t0 + j, X[:, j], M_miss[:, j], Flags[:, j]) for j in range(X.shape[1])]
        return StepOutputs(*(None if parts[0] is None else np.stack(parts, axis=1) for parts in zip(*outs)))

    def rebuild(self, slots: np.ndarray, t_last: int, X: np.ndarray, M_miss: np.ndarray, Flags: np.ndarray) -> None:
        """Rebuild the convolution rings of `slots` from their last k <= L steps (X, M_miss (B, k, F), Flags
        (B, k, R), the last one being step `t_last`; k < L only for a turbine that has seen k steps in all). The
        hidden-state ring is left as it was (it comes from the state)."""
        slots = np.asarray(slots, dtype=np.int64)
        k = X.shape[1]
        if X.shape[0] != slots.size or not 1 <= k <= self.L:
            raise ValueError(f"StreamScorer.rebuild: windows must be (B={slots.size}, k <= L={self.L}, F), got "
                             f"{X.shape}")  # fmt: skip
        self._grow(int(slots.max()) + 1 if slots.size else 0)
        for r in self.rings:
            r[:, slots] = 0.0
        keep = None if self.pool is None else self.pool.ring[slots]  # a copy (fancy indexing)
        for j in range(k):  # `run_series` without keeping the outputs (1000 turbines x L steps of them)
            self.step(slots, t_last - k + 1 + j, X[:, j], M_miss[:, j], Flags[:, j])
        if keep is not None:
            self.pool.set_rows(slots, keep)

    def state_dict(self) -> dict[str, Any]:
        """The fault head's ring of hidden states (the convolution rings are rebuilt from the fleet's windows)."""
        return {"n": self.n, "h_ring": None if self.pool is None else self.pool.ring[: self.n].copy()}

    @staticmethod
    def select_state(state: dict[str, Any], keep: np.ndarray) -> dict[str, Any]:
        """A `state_dict()` of the old slots `keep` only (increasing), renumbered from 0 (`runtime.slots`)."""
        n = int(state["n"])
        k = np.asarray(keep, dtype=np.int64)
        h = None if state["h_ring"] is None else kept_rows({"h_ring": state["h_ring"]}, k)["h_ring"]
        return {"n": int((k < n).sum()), "h_ring": h}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or set(state) != {"n", "h_ring"}:
            raise ValueError("StreamScorer.load_state_dict: expected keys ['h_ring', 'n']")
        n = int(state["n"])
        self._grow(n)
        if self.pool is not None:
            h = np.asarray(state["h_ring"], dtype=np.float32)
            if h.shape != (n, self.L - 1, self.D):
                raise ValueError(f"StreamScorer.load_state_dict: h_ring must be ({n}, {self.L - 1}, {self.D})")
            self.pool.set_rows(slice(0, n), h)


def make_scorer(bundle: Bundle, engine: str = "auto", intra_op_threads: int = 1, inter_op_threads: int = 1) -> Any:
    """The scorer `compute.engine` asks for: the streaming scorer ("stream", or "auto" with a step graph) or the
    window scorer ("window", or "auto" without one). "stream" on a bundle without a step graph is refused."""
    from scada_tcn.runtime.scorer import OnnxScorer

    if engine == "stream" or (engine == "auto" and bundle.stream is not None):
        return StreamScorer.from_bundle(bundle, intra_op_threads)
    if engine in ("auto", "window"):
        return OnnxScorer(bundle, intra_op_threads, inter_op_threads)
    raise ValueError(f"make_scorer: engine must be auto, stream or window, got {engine!r}")
