"""Per-signal scoring offline: every step of a split, the edge's tracker, and the levels fitted at export.

For a time range, each turbine's prepared arrays give one window ending at every step t >= L - 1 (the window
may reach back into the previous split: it holds only the past). A window whose present fraction reaches the
bundle's minimum is scored by the per-signal graph (torch or onnxruntime, same numbers); any other step of the
range is a missing step for the features (its repeat codes still count). `runtime.signals.SignalTracker`, the
edge's own code, then runs over the steps in time order, the turbines of one step together (the fleet baseline
compares them), exactly as the daemon releases them.

Export (`fit_signals`), on the validation split's normal steps (fault-labelled steps are neither fitted on nor,
with the fleet baseline, peers), with the residuals of passes over each turbine's series (`SeriesResiduals`: the
windows' newest outputs when the receptive field fits in L, each step computed once instead of L times):
* each feature's residual scale, 1.4826 x MAD of its newest-step residual, and the centre of its deviation (its
  median);
* a stuck check per `features.repeat_channels` entry, its `min_move` the `stuck_move_quantile` of its
  feature's step-to-step prediction change;
* the tracker over the split, then each monitor's level: for a monitored feature `level_margin` x the `percentile` p
  of its aggregate (with `level_centred`, its median c + `level_margin` x (p - c)), for a stuck check
  max(`stuck_min_run`, `stuck_margin` x its longest run); pooled, and per turbine for turbines with `min_steps`
  validation steps when asked (only the monitors of `turbine_groups` when given; the others keep the pooled level). A
  turbine's level that comes out <= 0 (under a fleet baseline: its aggregate never rose above its peers' on the normal
  validation steps) is no level: the turbine keeps the pooled one for that monitor (logged), where the floor of 1e-6
  made every rise above its peers an alert with a ratio in the millions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from scada_tcn.runtime.bundle import Bundle
from scada_tcn.runtime.errors import ConfigError
from scada_tcn.runtime.signals import SignalLevels, SignalParams, SignalSpec, SignalTracker, StuckCheck
from scada_tcn.runtime.stream import StreamScorer
from scada_tcn.runtime.vocab import Direction
from scada_tcn.runtime.windows import enough_present, sliding_present_fraction
from scada_tcn.trainer.config import RootCfg
from scada_tcn.trainer.config.groups import feature_groups
from scada_tcn.trainer.data.store import PreparedData
from scada_tcn.trainer.data.windowing import SPLITS, step_splits
from scada_tcn.trainer.evaluation.progress import progress_of, quiet
from scada_tcn.trainer.model.signals import SignalModule

__all__ = [
    "SERIES_STEPS", "SeriesResiduals", "SignalSteps", "StepResiduals", "fit_levels", "fit_signals", "module_residuals",
    "signal_steps", "track",
]  # fmt: skip

Residuals = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # -> resid, pred (B, F)
Series = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # one turbine's X, M (T, F), Fl (T, R), rows
_MAD = 1.4826


@dataclass
class SignalSteps:
    """The steps of a range, turbines interleaved in time order: every step of each turbine's grid."""

    turbine: np.ndarray  # (N,) object
    t_end: np.ndarray  # (N,) int64 ns
    scored: np.ndarray  # (N,) bool: a window with enough data
    resid: np.ndarray  # (N, F) float32, 0 where not scored
    pred: np.ndarray  # (N, F) float32, 0 where not scored
    present: np.ndarray  # (N, F) bool, the newest step's mask (False where not scored)
    flags: np.ndarray  # (N, R) float32, the newest step's flags
    repeat: np.ndarray  # (N, S) uint8, the newest step's repeat codes
    split: np.ndarray  # (N,) the split of each step's time
    label: np.ndarray  # (N,) bool: a fault-labelled step


def torch_residuals(module: SignalModule) -> Residuals:
    def run(X: np.ndarray, M: np.ndarray, Fl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            resid, pred = module(*(torch.from_numpy(a) for a in (X, M, Fl)))
        return resid.numpy(), pred.numpy()

    return run


class SeriesResiduals:
    """A module's residuals at a turbine's steps from passes over its series, `SERIES_STEPS` steps at a time with
    the receptive field's context before them: a step's outputs depend on its last receptive-field steps only,
    so they equal its L-step window's newest outputs (atol 1e-5, tested) at a fraction of the arithmetic (each
    step once instead of L times). Refused for a model whose receptive field exceeds L (its windows see less)."""

    def __init__(self, module: SignalModule) -> None:
        if not module.streams:
            raise ValueError(f"SeriesResiduals: the receptive field {module.model.receptive_field} exceeds L="
                             f"{module.L}: a window sees less than the series; use torch_residuals")  # fmt: skip
        self.module = module
        self.context = module.model.receptive_field - 1

    def __call__(self, X: np.ndarray, M: np.ndarray, Fl: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """Residuals and predictions (len(rows), F) at the steps `rows` (ascending, each >= L - 1) of one
        turbine's X, M (T, F) and Fl (T, R)."""
        empty = np.zeros((0, self.module.F), np.float32)
        mod, out_r, out_p = self.module, [empty], [empty]  # (no rows: empty outputs)
        a = 0
        while a < rows.size:  # each pass spans at most SERIES_STEPS steps, whatever the gaps between rows
            b = int(np.searchsorted(rows, rows[a] + SERIES_STEPS))
            r, a = rows[a:b], b
            lo, hi = int(r[0]) - self.context, int(r[-1]) + 1
            x, m, f = (torch.from_numpy(np.array(v[lo:hi], dtype=np.float32)) for v in (X, M, Fl))  # copies
            with torch.no_grad():
                pred = mod.predict_series(x, m, f)[r - lo]
                out_r.append(mod.residual(x[r - lo], m[r - lo], pred).numpy())
            out_p.append(pred.numpy())
        return np.concatenate(out_r), np.concatenate(out_p)

    def many(self, series: list[Series], progress: Callable[[int], None] = quiet) -> list[tuple[np.ndarray, ...]]:
        """`self(*s)` for each turbine's series `s`; `progress(steps scored so far)` after each."""
        out, done = [], 0
        for s in series:
            out.append(self(*s))
            done += s[3].size
            progress(done)
        return out


class StepResiduals:
    """An exported bundle's residuals at turbines' steps from its step graph, every turbine's step in one call
    (`runtime.stream.StreamScorer.run_series`, the edge's streaming engine): each run of requested steps is
    stepped in time order from zero rings L - 1 steps before its first step (a window of L real steps never
    reaches the zero padding), so each step is computed once where the window graph computes L. They equal the
    windows' newest outputs within the export's parity tolerance (verified at export over thousands of consecutive
    steps, and in the tests). A gap of more than L steps between requested steps starts a new run (stepping through
    it would cost more than the run's L - 1 steps of warm-up). Refused for a bundle without a step graph."""

    CELLS = 1 << 16  # turbine-steps per chunk (run_series keeps every head's outputs: about 60 MB with K F = 180)

    def __init__(self, bundle: Bundle, intra_op_threads: int = 1, chunk: int = 2048) -> None:
        if bundle.stream is None:
            raise ValueError("StepResiduals: the bundle has no step graph (step.onnx); score its windows instead")
        self.scorer = StreamScorer.from_bundle(bundle, intra_op_threads)
        self.L, self.F, self.R, self.chunk = bundle.dims.L, bundle.dims.F, bundle.dims.R, chunk

    def many(self, series: list[Series], progress: Callable[[int], None] = quiet) -> list[tuple[np.ndarray, ...]]:
        """Residuals and predictions (len(rows), F) at the steps `rows` (ascending) of each series (X, M (T, F),
        Fl (T, R), rows) -> one (resid, pred) per series; `progress(steps scored so far)` after each chunk."""
        done = 0
        out = [(np.zeros((s[3].size, self.F), np.float32), np.zeros((s[3].size, self.F), np.float32)) for s in series]
        runs = []  # (series, first index into its rows, end index, first step, end step): one slot each
        for i, (_, _, _, rows) in enumerate(series):
            cuts = [0, *(np.flatnonzero(np.diff(rows) > self.L) + 1).tolist(), rows.size]
            runs += [(i, a, b, max(int(rows[a]) - (self.L - 1), 0), int(rows[b - 1]) + 1)
                     for a, b in zip(cuts[:-1], cuts[1:]) if b > a]  # fmt: skip
        runs.sort(key=lambda r: r[4] - r[3], reverse=True)  # the runs still going are always slots 0 .. n - 1
        length = np.array([r[4] - r[3] for r in runs], dtype=np.int64)
        self.scorer.reset()
        t0 = 0
        while runs and t0 < length[0]:  # chunks of at most `chunk` steps and CELLS turbine-steps
            n = int((length > t0).sum())
            T = min(self.chunk, max(self.CELLS // n, 1), int(length[0]) - t0)
            X, M = np.zeros((n, T, self.F), np.float32), np.zeros((n, T, self.F), np.float32)
            Fl = np.zeros((n, T, self.R), np.float32)  # a run that ends in the chunk steps on zeros, not read
            for slot, (i, _, _, lo, hi) in enumerate(runs[:n]):
                part = slice(lo + t0, min(lo + t0 + T, hi))
                m = part.stop - part.start
                X[slot, :m], M[slot, :m], Fl[slot, :m] = series[i][0][part], series[i][1][part], series[i][2][part]
            got = self.scorer.run_series(np.arange(n), t0, X, M, Fl)
            for slot, (i, a, b, lo, _) in enumerate(runs[:n]):
                rows = series[i][3]
                first, end = a + np.searchsorted(rows[a:b], [lo + t0, lo + t0 + T])  # its steps in this chunk
                inside = slice(int(first), int(end))
                at = rows[inside] - lo - t0
                out[i][0][inside], out[i][1][inside] = got.resid[slot, at], got.pred[slot, at]
                done += at.size
            progress(done)
            t0 += T
        return out


SERIES_STEPS = 2048  # the span of a series pass in steps (plus the receptive field's context before it)


def module_residuals(module: SignalModule) -> Residuals | SeriesResiduals:
    """How `signal_steps` scores with a torch module: over each turbine's series when the module streams, else
    window by window."""
    return SeriesResiduals(module) if module.streams else torch_residuals(module)


def signal_steps(data: PreparedData, cfg: RootCfg, splits: tuple[str, ...],
                 residuals: Residuals | SeriesResiduals | StepResiduals, batch_size: int = 256,
                 turbines: list[str] | None = None,
                 log: Callable[[str], None] | None = None) -> SignalSteps:  # fmt: skip
    """Score every step of `splits` of every turbine (or of `turbines`) with `residuals`: L-step windows of
    `batch_size` at a time, or every turbine's series at once (`SeriesResiduals`, `StepResiduals`; see the
    module docstring). `log` gets progress lines."""
    L, min_present = cfg.data.windowing.L, cfg.data.windowing.min_present_fraction
    want = np.array([SPLITS.index(s) for s in splits])
    parts: dict[str, list[np.ndarray]] = {k: [] for k in SignalSteps.__dataclass_fields__}
    series: list[Series] = []  # the steps of each turbine with enough data in their window
    for tdir in sorted((Path(data.dir) / "turbines").iterdir()):
        tid = tdir.name
        if turbines is not None and tid not in turbines:
            continue
        ts = np.load(tdir / "timestamps.npy")
        sp = step_splits(ts, tid, cfg.data)
        steps = np.flatnonzero(np.isin(sp, want) & (np.arange(len(ts)) >= L - 1))
        if steps.size == 0:
            continue
        X, M, Fl = (np.load(tdir / f"{n}.npy", mmap_mode="r") for n in ("X", "M_miss", "Flags"))
        frac = sliding_present_fraction(np.asarray(M), steps - (L - 1), L)
        ok = enough_present(frac, min_present)
        present = np.zeros((steps.size, X.shape[1]), bool)
        present[ok] = np.asarray(M[steps[ok]]) > 0.5
        series.append((X, M, Fl, steps[ok]))
        labels = np.load(tdir / "labels.npy") if (tdir / "labels.npy").is_file() else np.zeros(len(ts), np.int64)
        lab = labels[steps]
        values = {"turbine": np.full(steps.size, tid, dtype=object), "t_end": ts[steps], "scored": ok,
                  "present": present, "flags": np.asarray(Fl[steps], np.float32),
                  "repeat": np.load(tdir / "Repeat.npy")[steps], "split": sp[steps],
                  "label": (lab.max(axis=1) if lab.ndim == 2 else lab) > 0}  # fmt: skip
        for k, v in values.items():
            parts[k].append(v)
    if not parts["t_end"]:
        raise ValueError(f"no steps of the splits {list(splits)} in {data.dir}")
    total = sum(s[3].size for s in series)
    progress = progress_of(log, f"scored steps of {'+'.join(splits)}", total)
    if isinstance(residuals, (SeriesResiduals, StepResiduals)):
        outs = residuals.many(series, progress)
    else:
        outs = _window_residuals(residuals, series, L, batch_size, progress)
    for (r, p), ok in zip(outs, parts["scored"]):  # every turbine's steps, unscored ones zero
        parts["resid"].append(np.zeros((ok.size, r.shape[1]), np.float32))
        parts["pred"].append(np.zeros((ok.size, r.shape[1]), np.float32))
        parts["resid"][-1][ok], parts["pred"][-1][ok] = r, p
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.lexsort((cat["turbine"].astype(str), cat["t_end"]))
    return SignalSteps(**{k: v[order] for k, v in cat.items()})


def _window_residuals(residuals: Residuals, series: list[Series], L: int, batch_size: int,
                      progress: Callable[[int], None]) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """`residuals` of each series' steps through their L-step windows, `batch_size` windows a call."""
    out, done = [], 0
    for X, M, Fl, rows in series:
        resid, pred = np.zeros((rows.size, X.shape[1]), np.float32), np.zeros((rows.size, X.shape[1]), np.float32)
        for i in range(0, rows.size, batch_size):
            win = rows[i : i + batch_size, None] + np.arange(-(L - 1), 1)[None, :]  # (b, L)
            xb, mb, fb = (np.ascontiguousarray(a[win], dtype=np.float32) for a in (X, M, Fl))
            resid[i : i + batch_size], pred[i : i + batch_size] = residuals(xb, mb, fb)
            done += win.shape[0]
            progress(done)
        out.append((resid, pred))
    return out


_TRACK_STEPS = 4096  # time steps per `SignalTracker.step` call of `track`


def track(tracker: SignalTracker, steps: SignalSteps, turbines: list[str], flag_names: list[str],
          use: np.ndarray | None = None) -> pd.DataFrame:  # fmt: skip
    """Run `tracker` over `steps` in time order (whole step times per call: `SignalTracker.step`'s `step_of`);
    `use` (N,) False makes a step an unscored one (e.g. fault-labelled steps at calibration). Returns one row per
    step: turbine_id, t_end, scored, the turbine-level score, and per monitor m value_<m>, ratio_<m>, per group g
    ratio_<g>, top_<g> (its monitor)."""
    scored = steps.scored if use is None else steps.scored & use
    slot = {t: i for i, t in enumerate(turbines)}
    slots = np.array([slot[t] for t in steps.turbine], dtype=np.int64)
    sp = tracker.spec
    skip = sp.skip_mask(steps.flags, flag_names)
    N, M, G = len(steps.t_end), len(sp.monitor_names), sp.n_groups
    value, ratio = np.full((N, M), np.nan), np.full((N, M), np.nan)
    gratio, gtop = np.full((N, G), np.nan), np.full((N, G), -1)
    score, observed = np.full(N, np.nan), np.zeros(N, dtype=bool)
    step_of = np.cumsum(np.diff(steps.t_end, prepend=steps.t_end[0]) != 0)  # the time step of each row
    bounds = np.flatnonzero(np.diff(step_of, prepend=-1))
    cuts = [*bounds[::_TRACK_STEPS].tolist(), N]  # whole time steps per call, bounded memory
    for a, b in zip(cuts[:-1], cuts[1:]):
        r = np.arange(a, b)
        st = tracker.step(slots[r], list(steps.turbine[r]), steps.resid[r], steps.present[r], steps.pred[r],
                          scored[r], steps.repeat[r], skip[r], step_of[r])  # fmt: skip
        value[r], ratio[r], gratio[r], gtop[r], score[r] = st.value, st.ratio, st.group_ratio, st.group_top, st.score
        observed[r] = st.observed
    cols = {"turbine_id": steps.turbine, "t_end": steps.t_end, "scored": observed, "score": score}
    for j, m in enumerate(sp.monitor_names):
        cols |= {f"value_{m}": value[:, j], f"ratio_{m}": ratio[:, j]}
    for j, g in enumerate(sp.groups):
        cols |= {f"ratio_{g}": gratio[:, j], f"top_{g}": gtop[:, j]}
    return pd.DataFrame(cols)


def _directions(cfg: RootCfg, bases: list[str]) -> tuple[Direction, ...]:
    d = cfg.infer.signals.directions
    return tuple(Direction(d.get(b, Direction.both)) for b in bases)


def _stuck_checks(cfg: RootCfg, data: PreparedData, group_of: tuple[int, ...], steps: SignalSteps,
                  normal: np.ndarray) -> tuple[StuckCheck, ...]:  # fmt: skip
    """A stuck check per repeat channel of the prepared data, each with the prediction change of its feature
    (`derive.stuck_feature`) that counts as "expected to move"."""
    from scada_tcn.runtime.spec import PipelineSpec
    from scada_tcn.trainer.config.derive import stuck_feature

    spec = PipelineSpec.from_dict(data.pipeline_spec)
    dt_ns = int(spec.dt_seconds) * 10**9
    checks = []
    for r, channel in enumerate(spec.repeat_channels):
        feature = stuck_feature(spec, channel)
        if feature is None or group_of[spec.feature_names.index(feature)] < 0:
            raise ConfigError(f"features.repeat_channels: {channel!r} has no scored feature to expect its moves from")
        f = spec.feature_names.index(feature)
        moves = []
        for t in np.unique(steps.turbine):  # consecutive normal scored steps of one turbine
            rows = np.flatnonzero((steps.turbine == t) & normal)
            d = np.abs(np.diff(steps.pred[rows, f].astype(np.float64)))
            moves.append(d[np.diff(steps.t_end[rows]) == dt_ns])
        m = np.concatenate(moves) if moves else np.zeros(0)
        min_move = float(np.quantile(m, cfg.infer.signals.stuck_move_quantile)) if m.size else 0.0
        checks.append(StuckCheck(channel, r, f, min_move))
    return tuple(checks)


def fit_signals(module: SignalModule, data: PreparedData, cfg: RootCfg, residuals: Residuals | None = None,
                log: Callable[[str], None] = lambda m: None) -> tuple[SignalParams, np.ndarray]:  # fmt: skip
    """Fit the residual scale (into `module`) on the validation split, then `fit_levels`. Returns the bundle's
    `signals` section and the turbine-level scores of the normal validation steps (the drift reference)."""
    module.set_scale(torch.ones(module.F))
    steps = signal_steps(data, cfg, ("val",), residuals or module_residuals(module))
    normal = steps.scored & ~steps.label
    r = np.where(steps.present & normal[:, None], steps.resid.astype(np.float64), np.nan)  # raw residuals
    med = np.nanmedian(r, axis=0)
    scale = _MAD * np.nanmedian(np.abs(r - med), axis=0)
    scale = np.where(np.isfinite(scale) & (scale > 1e-3), scale, 1e-3)
    module.set_scale(torch.as_tensor(scale, dtype=torch.float32))
    steps.resid = (steps.resid / scale).astype(np.float32)  # the graph divides by the fitted scale from now on
    return fit_levels(steps, data, cfg, log)


def fit_levels(steps: SignalSteps, data: PreparedData, cfg: RootCfg, log: Callable[[str], None] = lambda m: None
               ) -> tuple[SignalParams, np.ndarray]:  # fmt: skip
    """Centres, stuck checks and levels from scaled residuals `steps` of the validation split (see the module
    docstring); returns the `signals` section and the normal steps' turbine-level scores under it."""
    from scada_tcn.trainer.config.derive import spec_from_config

    sg = cfg.infer.signals
    groups = feature_groups(cfg)
    pspec = spec_from_config(cfg)
    features, flag_names = tuple(pspec.feature_names), list(pspec.flag_names)
    normal = steps.scored & ~steps.label
    directions = _directions(cfg, pspec.feature_bases())
    primary = set(pspec.base_names())
    skip = set(sg.unmonitored)
    monitored = tuple(g >= 0 and (sg.monitor_derived or n in primary) and b not in skip
                      for n, g, b in zip(features, groups.group_of, pspec.feature_bases()))  # fmt: skip
    probe = SignalSpec(features, groups.names, groups.group_of, directions, (0.0,) * len(features), monitored)
    dev = np.where(steps.present & normal[:, None], probe.feature_deviation(steps.resid), np.nan)
    center = np.nan_to_num(np.nanmedian(dev, axis=0), nan=0.0)
    stuck = _stuck_checks(cfg, data, groups.group_of, steps, normal)
    spec = SignalSpec(features, groups.names, groups.group_of, directions, tuple(float(c) for c in center), monitored,
                      stuck, tuple(sg.skip_flags))  # fmt: skip
    turbines = sorted(set(steps.turbine))
    group_halflife = {g: float(h) for g, h in sg.group_halflife.items()}
    tracker = SignalTracker(spec, sg.aggregator, sg.halflife_steps, sg.cusum_k, sg.max_gap_steps, sg.baseline,
                            sg.min_peers, group_halflife=group_halflife)  # fmt: skip
    res = track(tracker, steps, turbines, flag_names, use=~steps.label)
    values = res[[f"value_{m}" for m in spec.monitor_names]].to_numpy(copy=True)
    values[steps.label] = np.nan  # a run or an aggregate during a fault is not a normal one
    n_feat = len(spec.monitor_features)
    fitted = _levels(values, n_feat, cfg)
    degenerate = [f"pooled {m}" for m in np.asarray(spec.monitor_names)[fitted <= _MIN_LEVEL]]
    pooled = np.maximum(fitted, _MIN_LEVEL)  # a level must be > 0: a ratio divides by it
    per_turbine, fallbacks = {}, {}
    own = spec.monitor_groups_in(sg.turbine_groups) if sg.turbine_groups else np.ones(len(pooled), dtype=bool)
    if sg.per_turbine:
        for t in turbines:
            v = values[res["turbine_id"].to_numpy() == t]
            n = int(np.isfinite(v[:, :n_feat]).all(axis=1).sum())
            if n >= sg.min_steps:
                mine = _levels(v, n_feat, cfg)
                per_turbine[t] = tuple(np.where(own & (mine > _MIN_LEVEL), mine, pooled).tolist())
                degenerate += [f"{t} {m}" for m in np.asarray(spec.monitor_names)[own & (mine <= _MIN_LEVEL)]]
            else:
                fallbacks[t] = f"{n} validation steps < min_steps={sg.min_steps}; uses the pooled levels"
    if degenerate:
        log(f"levels <= 0 (the aggregate never rose above its baseline on validation): {', '.join(degenerate)}; "
            f"a turbine's keeps the pooled level, the pooled one is {_MIN_LEVEL} (check that monitor)")  # fmt: skip
    levels = SignalLevels(tuple(pooled.tolist()), per_turbine, fallbacks, float(sg.percentile),
                          int(np.isfinite(values).any(axis=1).sum()))  # fmt: skip
    log(f"per-signal levels ({levels.n_steps} validation steps): "
        + ", ".join(f"{m} {v:.3g}" for m, v in zip(spec.monitor_names, pooled)))  # fmt: skip
    params = SignalParams(spec, sg.aggregator, sg.halflife_steps, sg.cusum_k, sg.max_gap_steps, sg.baseline,
                          sg.min_peers, levels, group_halflife)  # fmt: skip
    tracked = track(SignalTracker.from_params(params), steps, turbines, flag_names, use=~steps.label)
    scores = tracked["score"].to_numpy()  # the steps the edge's drift monitor counts: observed (`scored`), finite
    return params, scores[np.isfinite(scores) & tracked["scored"].to_numpy() & ~steps.label]


_MIN_LEVEL = 1e-6  # a level at or below this is none


def _levels(values: np.ndarray, n_feat: int, cfg: RootCfg) -> np.ndarray:
    """Monitored features: margin x the percentile p of the aggregate (<= 0 when it never rose above the
    baseline), or with `level_centred` its median c + margin x (p - c); stuck checks: max(min run, margin x
    longest run)."""
    sg = cfg.infer.signals
    out = []
    for j in range(values.shape[1]):
        v = values[:, j][np.isfinite(values[:, j])]
        if j < n_feat:
            c = float(np.median(v)) if sg.level_centred and v.size else 0.0
            level = c + sg.level_margin * (float(np.percentile(v, sg.percentile)) - c) if v.size else 1.0
        else:
            level = max(float(sg.stuck_min_run), sg.stuck_margin * float(v.max(initial=0.0)))
        out.append(level)
    return np.array(out, dtype=np.float64)
