"""Parity of the exported graphs with torch, on validation windows and on adversarial inputs.

Contract
--------
Each case runs the torch modules (`trainer.model.reference.ReferenceModules`) and onnxruntime sessions on the graph
bytes (graph optimisation on, as at the edge) on the same inputs, and records per output "graph/name":

- `max_abs`: max |onnx - torch|;
- `max_rel`: max |onnx - torch| / |torch| over elements with |torch| > atol;
- `n_bad`: elements outside |onnx - torch| <= atol + rtol |torch| (numpy `allclose`); for `top_idx`, rows whose
  indices differ where the contributions are not tied (an order between contributions equal within tolerance is
  not an error, so such rows are not counted); for the per-signal `resid` = (x - pred) / scale, plus what its
  operands' tolerance allows, (atol + rtol max(|x|, |pred|)) / scale (`resid_inherited`): a residual near zero
  between two values of 20 (the adversarial extremes) carries their float32 rounding, divided by a scale below
  one, while `pred` itself is held to the plain tolerance.

Cases: validation windows at batch 64 and at batch 1, and adversarial windows: all missing, all flags on,
extreme values and a mix of extremes and missing values. With a step graph, "stream_consecutive": the edge's
streaming scorer over thousands of consecutive validation steps against the window graphs (`stream_case`).
Extreme means |x| = `extreme`: the export passes the
scaler's clip, the largest value the pipeline can ever feed the model (100 when the scaler does not clip).
Far beyond that, float32 rounding of activations of size |x| alone exceeds atol=1e-5 on outputs near zero
(|x| = 1e3 gives ~1e-4 on Y_hat), which says nothing about the export. `passed` is true when no output of any
case has `n_bad > 0`; the export fails otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from scada_tcn.export.tolerances import DEFAULT_ATOL, DEFAULT_EXTREME, DEFAULT_RTOL
from scada_tcn.runtime.bundle import GRAPH_INPUTS, ParityReport
from scada_tcn.trainer.model.reference import ReferenceModules
from scada_tcn.trainer.model.streaming import StepModule

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "DEFAULT_EXTREME",
    "adversarial_cases",
    "compare",
    "resid_inherited",
    "run_both",
    "topn_disagreements",
    "verify_graphs",
]


def compare(ref: np.ndarray, got: np.ndarray, atol: float, rtol: float, inherited: np.ndarray | None = None
            ) -> dict[str, Any]:  # fmt: skip
    """max_abs, max_rel and n_bad of `got` against the reference `ref` (see the module docstring); `inherited`
    (ref's shape) adds to each element's tolerance what its operands' own tolerance allows (`resid_inherited`)."""
    if ref.shape != got.shape:
        return {"max_abs": float("inf"), "max_rel": float("inf"), "n_bad": int(max(ref.size, got.size, 1))}
    r, g = ref.astype(np.float64), got.astype(np.float64)
    diff = np.abs(g - r)
    diff[np.isnan(r) & np.isnan(g)] = 0.0
    diff[np.isnan(diff)] = np.inf
    big = np.abs(r) > atol
    tol = atol + rtol * np.abs(r) + (0.0 if inherited is None else inherited)
    return {
        "max_abs": float(diff.max(initial=0.0)),
        "max_rel": float((diff[big] / np.abs(r[big])).max(initial=0.0)),
        "n_bad": int((~(diff <= tol)).sum()),
    }


def resid_inherited(x_new: np.ndarray, pred: np.ndarray, scale: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """The tolerance a per-signal residual (x - pred) / scale inherits from its operands: pred's own tolerance at
    the larger of |x| and |pred|, divided by the feature's scale. A residual near zero taken between two large
    values (the adversarial extremes) carries their float32 rounding, which its own magnitude does not bound."""
    big = np.maximum(np.abs(x_new.astype(np.float64)), np.abs(pred.astype(np.float64)))
    return (atol + rtol * big) / scale.astype(np.float64)


def topn_disagreements(contrib: np.ndarray, idx_ref: np.ndarray, idx_got: np.ndarray, atol: float, rtol: float) -> int:
    """Rows where the top-N indices differ and the reference contributions they pick are not tied."""
    if idx_ref.shape != idx_got.shape:
        return int(max(len(idx_ref), 1))
    n = 0
    for row in np.nonzero((idx_ref != idx_got).any(axis=1))[0]:
        a = contrib[row, idx_ref[row]].astype(np.float64)
        if np.any((idx_got[row] < 0) | (idx_got[row] >= contrib.shape[1])):
            n += 1
            continue
        b = contrib[row, idx_got[row]].astype(np.float64)
        n += int(not np.all(np.abs(a - b) <= atol + rtol * np.abs(a)))
    return n


def run_both(
    mods: ReferenceModules, sessions: dict[str, ort.InferenceSession], X: np.ndarray, M: np.ndarray, Fl: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """({"graph/output": torch array}, {"graph/output": onnxruntime array}) for one batch, end to end: both
    backends get the same X, M_miss, Flags and build the model input themselves."""
    with torch.no_grad():
        ref_clean = mods.clean(*(torch.from_numpy(a) for a in (X, M, Fl)))
        ref_score = mods.scoring(*(torch.from_numpy(a) for a in (X, M, Fl)))
    ref = {f"clean/{n}": t.numpy() for n, t in zip(mods.clean.output_names, ref_clean)}
    names = mods.scoring.output_names
    ref_score = ref_score if isinstance(ref_score, tuple) else (ref_score,)
    ref |= {f"scoring/{n}": t.numpy() for n, t in zip(names, ref_score)}
    feeds = dict(zip(GRAPH_INPUTS, (X, M, Fl)))
    got_clean = sessions["clean"].run(list(mods.clean.output_names), feeds)
    got_score = sessions["scoring"].run(list(names), feeds)
    got = {f"clean/{n}": a for n, a in zip(mods.clean.output_names, got_clean)}
    got |= {f"scoring/{n}": a for n, a in zip(names, got_score)}
    return ref, got


def adversarial_cases(
    like: tuple[np.ndarray, np.ndarray, np.ndarray], extreme: float = DEFAULT_EXTREME, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Adversarial variants of a batch (X, M_miss, Flags): all missing, all flags on, extreme values, a mix."""
    X, M, Fl = like
    rng = np.random.default_rng(seed)
    sign = np.where(rng.random(X.shape) < 0.5, -1.0, 1.0).astype(np.float32)
    big = (sign * extreme).astype(np.float32)
    holes = (rng.random(X.shape) > 0.3).astype(np.float32)
    return {
        "all_missing": (rng.standard_normal(X.shape).astype(np.float32), np.zeros_like(M), Fl),
        "all_flags_on": (X, M, np.ones_like(Fl)),
        "extreme_values": (big, np.ones_like(M), Fl),
        "extreme_with_missing": (big * holes, holes, (rng.random(Fl.shape) < 0.5).astype(np.float32)),
    }


def _session(graph: bytes) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(graph, sess_options=so, providers=["CPUExecutionProvider"])


def _case_stats(mods: ReferenceModules, sessions: dict, batches: list[tuple], atol: float, rtol: float) -> dict:
    out: dict[str, dict[str, Any]] = {}
    for X, M, Fl in batches:
        ref, got = run_both(mods, sessions, X, M, Fl)
        for name in ref:
            inherited = None
            if name == "scoring/resid" and "scoring/pred" in ref:  # per-signal: (x - pred) / scale at the newest step
                scale = mods.scoring.scale.numpy()
                inherited = resid_inherited(X[:, -1, :], ref["scoring/pred"], scale, atol, rtol)
            s = compare(ref[name], got[name], atol, rtol, inherited)
            if name == "scoring/top_idx":
                s["n_bad"] = topn_disagreements(ref["scoring/feat_contrib"], ref[name], got[name], atol, rtol)
            prev = out.get(name, {"max_abs": 0.0, "max_rel": 0.0, "n_bad": 0})
            out[name] = {
                "max_abs": max(prev["max_abs"], s["max_abs"]),
                "max_rel": max(prev["max_rel"], s["max_rel"]),
                "n_bad": prev["n_bad"] + s["n_bad"],
            }
    return {"n_windows": int(sum(len(b[0]) for b in batches)), "outputs": out}


def stream_case(
    step: StepModule,
    sessions: dict[str, ort.InferenceSession],
    series: tuple[np.ndarray, np.ndarray, np.ndarray],
    atol: float,
    rtol: float,
    batch: int = 256,
) -> dict[str, Any]:
    """step.onnx driven by the edge's `StreamScorer` over consecutive steps (X, M_miss (B, T, F), Flags (B, T, R):
    B turbines, T steps, from zero rings) against the window graphs' newest position for the window ending at
    every step t >= L - 1: resid, pred, Y_hat, rul; and the step graph against torch on random rings."""
    from scada_tcn.runtime.bundle import StreamParams
    from scada_tcn.runtime.stream import StreamScorer

    X, M, Fl = (np.ascontiguousarray(a, dtype=np.float32) for a in series)
    B, T, _ = X.shape
    L = step.L
    params = StreamParams(step.P, tuple(step.convs), step.D, step.ring)
    scorer = StreamScorer(sessions["step"], params, L, step.F, step.R)
    out = scorer.run_series(np.arange(B), 0, X, M, Fl)  # (B, T, ...)
    got = {name: getattr(out, name) for name in ("resid", "pred", "Y_hat", "rul") if getattr(out, name) is not None}
    ends = [(b, t) for t in range(L - 1, T) for b in range(B)]
    ref: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(ends), batch):
        idx = ends[i : i + batch]
        win = [(X[b, t - L + 1 : t + 1], M[b, t - L + 1 : t + 1], Fl[b, t - L + 1 : t + 1]) for b, t in idx]
        feeds = dict(zip(GRAPH_INPUTS, (np.stack([w[k] for w in win]) for k in range(3))))
        for graph, names in (("scoring", ("resid", "pred")), ("clean", ("Y_hat", "rul"))):
            outs = dict(zip((o.name for o in sessions[graph].get_outputs()), sessions[graph].run(None, feeds)))
            for name in names:
                if name in outs:
                    ref.setdefault(name, []).append(outs[name].reshape(len(idx), *outs[name].shape[1:]))
    stats = {}
    example = step.example(B=4)
    with torch.no_grad():
        want = step(*example)
    feeds = {n: a.numpy() for n, a in zip(step.input_names, example)}
    for name, r, g in zip(step.output_names, want, sessions["step"].run(list(step.output_names), feeds)):
        stats[f"step_torch/{name}"] = compare(r.numpy(), g, atol, rtol)
    for name, series_out in got.items():  # the windows' order: steps t >= L - 1 in order, turbines within a step
        g = np.swapaxes(series_out, 0, 1)[L - 1 :].reshape(-1, *series_out.shape[2:])
        r = np.concatenate(ref[name])
        stats[f"step/{name}"] = compare(r.reshape(g.shape), g, atol, rtol)
    return {"n_windows": len(ends), "outputs": stats}


def verify_graphs(
    mods: ReferenceModules,
    graphs: dict[str, bytes],
    val: tuple[np.ndarray, np.ndarray, np.ndarray],
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    extreme: float = DEFAULT_EXTREME,
    n_single: int = 8,
    series: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> ParityReport:
    """The bundle's parity section for the graphs against the torch modules; `val` holds validation windows, and
    `series` consecutive validation steps of a few turbines for the step graph (`stream_case`)."""
    sessions = {g: _session(b) for g, b in graphs.items()}
    X, M, Fl = (np.ascontiguousarray(a, dtype=np.float32) for a in val)
    B = min(64, len(X))
    cases = {
        f"val_batch{B}": _case_stats(mods, sessions, [(X[:B], M[:B], Fl[:B])], atol, rtol),
        "val_batch1": _case_stats(
            mods,
            sessions,
            [(X[i : i + 1], M[i : i + 1], Fl[i : i + 1]) for i in range(min(n_single, len(X)))],
            atol,
            rtol,
        ),
    }
    for name, batch in adversarial_cases((X[:B], M[:B], Fl[:B]), extreme).items():
        cases[name] = _case_stats(mods, sessions, [batch], atol, rtol)
    if mods.step is not None:
        if series is None:
            raise ValueError("verify_graphs: a bundle with a step graph needs `series` to check it against")
        cases["stream_consecutive"] = stream_case(mods.step, sessions, series, atol, rtol)
    outputs: dict[str, dict[str, Any]] = {}
    for case in cases.values():
        for name, s in case["outputs"].items():
            prev = outputs.get(name, {"max_abs": 0.0, "max_rel": 0.0, "n_bad": 0})
            outputs[name] = {k: (prev[k] + s[k]) if k == "n_bad" else max(prev[k], s[k]) for k in prev}
    passed = all(s["n_bad"] == 0 for s in outputs.values())
    return ParityReport(float(atol), float(rtol), float(extreme), passed, outputs, cases)
