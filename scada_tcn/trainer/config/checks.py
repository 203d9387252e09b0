"""Cross-field invariants of the config (spec `validate_config`). Pure: no I/O, no defaults filled in."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from scada_tcn.runtime.csv_table import dialect_problem
from scada_tcn.runtime.errors import ConfigError
from scada_tcn.runtime.ids import id_pattern_problem
from scada_tcn.runtime.signals import invalid_halflives
from scada_tcn.runtime.stamps import iso_utc_ns
from scada_tcn.runtime.telemetry import time_format_problem, zone_problem
from scada_tcn.runtime.vocab import ScoreAggregator, ScoreKind
from scada_tcn.trainer.config.choices import FlagSourceType, ReceptiveFieldRule
from scada_tcn.trainer.config.derive import spec_from_config, stuck_feature
from scada_tcn.trainer.model.geometry import receptive_field, resolve_dilations

if TYPE_CHECKING:
    from scada_tcn.trainer.config.schema import RootCfg


_TURBINE_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]+$")


def split_bound_ns(key: str, value: str) -> int:
    """A period's bound (a split's, or a command's --start / --end; `key` names it) -> ns UTC, read as every stamp
    is (`runtime.stamps`), with a UTC offset."""
    t = iso_utc_ns(value.strip()) if isinstance(value, str) else "bad_timestamp"
    if t == "naive_timestamp":
        raise ConfigError(f"{key}: {value!r} has no UTC offset; write one, e.g. 2024-03-01T00:00:00+00:00")
    if isinstance(t, str):
        raise ConfigError(f"{key}: {value!r} is not an ISO-8601 timestamp (e.g. 2024-03-01T00:00:00+00:00)")
    return t


def _check_splits(cfg: RootCfg) -> None:
    zone = zone_problem(cfg.data.identifiers.naive_timezone, "data.identifiers.naive_timezone")
    if zone:
        raise ConfigError(zone)
    ident = cfg.data.identifiers
    problem = time_format_problem(ident.time_format, "data.identifiers.time_format")
    if problem:
        raise ConfigError(problem)
    if (ident.turbine_id_col is None) == (ident.turbine_id_from_file is None):
        raise ConfigError("data.identifiers: set turbine_id_col (a column of turbine ids) or turbine_id_from_file (a "
                          "pattern taking the id from each file's name), and the other to null")  # fmt: skip
    pattern = ident.turbine_id_from_file
    problem = None if pattern is None else id_pattern_problem(pattern, "data.identifiers.turbine_id_from_file")
    if problem:
        raise ConfigError(problem)
    c = cfg.data.csv
    dialect = dialect_problem(c.delimiter, c.decimal, c.skip_lines, "data.csv", c.encoding)
    if dialect:
        raise ConfigError(dialect)
    sp = cfg.data.splits
    if sp.method == "time":
        ranges = []
        for name in ("train_range", "val_range", "test_range"):
            r = getattr(sp, name)
            key = f"data.splits.{name}"
            if r is None or len(r) != 2:
                raise ConfigError(f"{key} must be [start, end) with splits.method=time, got {r}")
            a, b = split_bound_ns(key, r[0]), split_bound_ns(key, r[1])
            if not a < b:
                raise ConfigError(f"{key}: start {r[0]} must be before end {r[1]}")
            ranges.append((a, b, key))
        ranges.sort()
        for (_, b1, k1), (a2, _, k2) in zip(ranges, ranges[1:]):
            if a2 < b1:
                raise ConfigError(f"{k1} and {k2} overlap: time splits must not share a timestamp")
    else:
        lists = {n: getattr(sp, f"{n}_turbines") for n in ("train", "val", "test")}
        for n, lst in lists.items():
            if not lst:
                raise ConfigError(f"data.splits.{n}_turbines must list turbines with splits.method=turbine")
            bad = [p for p in lst if not p or not _TURBINE_PATTERN.match(p)]
            if bad:
                raise ConfigError(
                    f"data.splits.{n}_turbines: {bad} are neither turbine ids (letters, digits, '_', '.', '-') "
                    "nor glob patterns of them (* ? [seq] [!seq])"
                )
        for a in lists:
            for b in lists:
                common = sorted(set(lists[a]) & set(lists[b])) if a < b else []
                if common:
                    raise ConfigError(f"turbines {common} are in both data.splits.{a}_turbines and {b}_turbines")


def _check_channels(cfg: RootCfg) -> None:
    """What only the trainer reads: winsorize quantiles, causality switches, flag sources and regime weights.

    The channels, features and flag rules themselves are checked once, by the PipelineSpec the config implies
    (`derive.spec_from_config`, called by `validate_config`)."""
    chans = list(cfg.data.columns)
    if not chans:
        raise ConfigError("data.columns must map channel names to columns of the raw table")
    f = cfg.features
    unknown = [c for c in cfg.data.qc.winsorize if c not in chans]
    if unknown:
        raise ConfigError(f"data.qc.winsorize: unknown channels {unknown}; data.columns defines {chans}")
    for c, pair in cfg.data.qc.winsorize.items():
        if len(pair) != 2 or not 0.0 <= pair[0] < pair[1] <= 1.0:
            raise ConfigError(f"data.qc.winsorize.{c}: quantiles must satisfy 0 <= low < high <= 1, got {list(pair)}")
    if not f.rolling.causal:
        raise ConfigError("features.rolling.causal must be true: a rolling statistic may not look ahead")
    fl = cfg.flags
    if fl.sources.type == FlagSourceType.columns:
        bad = {k: v for k, v in fl.sources.mapping.items() if v not in chans}
        if bad:
            raise ConfigError(f"flags.sources.mapping {bad}: with type=columns each value must be a channel of {chans}")
    if not fl.causal_alignment:
        raise ConfigError("flags.causal_alignment must be true: a flag at t may only use data up to t")
    rw = cfg.train.loss.regime_weighting
    unknown = [k for k in rw.weight_map if k not in fl.flag_names]
    if unknown:
        raise ConfigError(
            f"train.loss.regime_weighting.weight_map: unknown flags {unknown}; flags: {list(fl.flag_names)}"
        )


def _check_rul(cfg: RootCfg) -> None:
    rul, head = cfg.data.rul, cfg.model.heads.rul
    if head.enabled != rul.enabled:
        raise ConfigError(
            f"model.heads.rul.enabled={head.enabled} but data.rul.enabled={rul.enabled}: the RUL head trains on the "
            "data.rul target column, so turn both on or both off"
        )
    if not rul.enabled:
        return
    if not rul.cap > 0:
        raise ConfigError(f"data.rul.cap must be > 0 (the target is min(rul, cap)), got {rul.cap}")
    ident = cfg.data.identifiers
    if rul.column in (ident.turbine_id_col, ident.time_col):
        raise ConfigError(f"data.rul.column={rul.column!r} is the turbine-id or time column")
    leaked = sorted(c for c, col in cfg.data.columns.items() if col == rul.column)
    if leaked:
        raise ConfigError(
            f"data.rul.column={rul.column!r} is also mapped to channels {leaked} in data.columns: the target "
            "would leak into the model inputs; remove it from data.columns"
        )
    if not cfg.train.loss.lambdas.rul >= 0:
        raise ConfigError(f"train.loss.lambdas.rul must be >= 0, got {cfg.train.loss.lambdas.rul}")


def _check_model(cfg: RootCfg) -> None:
    w, heads, tcn = cfg.data.windowing, cfg.model.heads, cfg.model.tcn
    if heads.forecast.enabled and w.K <= 0:
        raise ConfigError("model.heads.forecast.enabled=true needs data.windowing.K > 0 (set K or disable the head)")
    labels = cfg.data.labels
    if labels.enabled and not heads.fault.enabled:
        raise ConfigError("data.labels.enabled=true needs model.heads.fault.enabled=true (labels would be unused)")
    if heads.fault.enabled and not labels.enabled:
        raise ConfigError("model.heads.fault.enabled=true needs data.labels.enabled=true: the head would never train")
    _check_rul(cfg)
    if labels.enabled:
        if len(labels.class_names) < 2:
            raise ConfigError(
                f"data.labels.class_names needs >= 2 classes (class 0 = normal), got {labels.class_names}"
            )
        if heads.fault.C != len(labels.class_names):
            raise ConfigError(
                f"model.heads.fault.C={heads.fault.C} must equal len(data.labels.class_names)={len(labels.class_names)}"
            )
        if heads.fault.multilabel != labels.multilabel:
            raise ConfigError("model.heads.fault.multilabel must equal data.labels.multilabel")
        if not cfg.data.paths.labels_file:
            raise ConfigError("data.labels.enabled=true with label_source=file needs data.paths.labels_file")
    if not heads.recon.enabled:
        raise ConfigError("model.heads.recon.enabled must be true: the anomaly score is the reconstruction error")
    try:
        dil = resolve_dilations(tcn.dilations, tcn.num_blocks, tcn.dilation_list)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if tcn.kernel_size < 2 or tcn.D < 1 or not 0.0 <= tcn.dropout < 1.0:
        raise ConfigError(f"model.tcn: need kernel_size >= 2, D >= 1, 0 <= dropout < 1; got {tcn}")
    rule = cfg.model.receptive_field
    rf = receptive_field(tcn.kernel_size, dil)
    if rule == ReceptiveFieldRule.covers_window and rf < w.L:
        raise ConfigError(
            f"model.receptive_field=covers_window: receptive field {rf} (kernel_size={tcn.kernel_size}, dilations="
            f"{dil}) is shorter than data.windowing.L={w.L}: add blocks (model.tcn.num_blocks) or raise kernel_size"
        )
    if rule == ReceptiveFieldRule.streamable and rf > w.L:
        raise ConfigError(
            f"model.receptive_field=streamable: receptive field {rf} (kernel_size={tcn.kernel_size}, dilations="
            f"{dil}) is longer than data.windowing.L={w.L}, so the edge could not stream it step by step: use fewer "
            "blocks (model.tcn.num_blocks) or a smaller kernel_size, or set model.receptive_field=any (window "
            "engine only)"
        )


def _check_signals(cfg: RootCfg) -> None:
    if cfg.infer.score != ScoreKind.per_signal:
        return
    sg = cfg.infer.signals
    if cfg.train.group_mask_prob <= 0:
        raise ConfigError(
            "infer.score=per_signal predicts each signal group from the others: it needs a model trained with "
            "train.group_mask_prob > 0 (e.g. 0.5)"
        )
    if (sg.aggregator == ScoreAggregator.ewma) != (sg.halflife_steps is not None) or (
        sg.halflife_steps is not None and not sg.halflife_steps > 0
    ):
        raise ConfigError("infer.signals.halflife_steps (> 0) is required by, and only used by, aggregator=ewma")
    if sg.group_halflife and sg.aggregator != ScoreAggregator.ewma:
        raise ConfigError("infer.signals.group_halflife: half-lives per group are for aggregator=ewma only")
    bad = invalid_halflives(sg.group_halflife)
    if bad:
        raise ConfigError(f"infer.signals.group_halflife: half-lives must be finite numbers of steps > 0, got {bad}")
    if (sg.aggregator == ScoreAggregator.cusum) != (sg.cusum_k is not None) or (
        sg.cusum_k is not None and not sg.cusum_k >= 0
    ):
        raise ConfigError("infer.signals.cusum_k (>= 0) is required by, and only used by, aggregator=cusum")
    if sg.max_gap_steps < 1 or sg.min_peers < 1 or sg.min_steps < 1 or sg.stuck_min_run < 1:
        raise ConfigError("infer.signals.max_gap_steps, min_peers, min_steps and stuck_min_run must be >= 1")
    if not 0.0 < sg.percentile <= 100.0:
        raise ConfigError("infer.signals.percentile must be in (0, 100]")
    if not (0.0 <= sg.stuck_move_quantile < 1.0 and sg.stuck_margin >= 1.0 and sg.level_margin >= 1.0):
        raise ConfigError("infer.signals.stuck_move_quantile must be in [0, 1), stuck_margin and level_margin >= 1")
    if sg.turbine_groups and not sg.per_turbine:
        raise ConfigError("infer.signals.turbine_groups names the groups with levels per turbine: set per_turbine=true")
    unknown = sorted(set(sg.skip_flags) - set(cfg.flags.flag_names))
    if unknown:
        raise ConfigError(f"infer.signals.skip_flags: {unknown} are not flags; flags.flag_names {cfg.flags.flag_names}")
    spec = spec_from_config(cfg)
    unlinked = [c for c in cfg.features.repeat_channels if stuck_feature(spec, c) is None]
    if unlinked:
        raise ConfigError(
            f"features.repeat_channels: {unlinked} are neither features nor the first channel of a difference "
            "(e.g. gearbox_oil_temp in gearbox_oil_above_ambient), so no prediction says when they should move"
        )
    bases = set(spec.feature_bases())
    unknown = sorted(set(sg.unmonitored) - bases)
    if unknown:
        raise ConfigError(f"infer.signals.unmonitored: {unknown} are not base columns of the features; {sorted(bases)}")
    unknown = sorted(set(sg.directions) - bases)
    if unknown:
        raise ConfigError(f"infer.signals.directions: {unknown} are not base columns of the features; {sorted(bases)}")
    from scada_tcn.trainer.config.groups import feature_groups  # imports the registry, which imports this module

    names = feature_groups(cfg).names
    for key, given in (("turbine_groups", sg.turbine_groups), ("group_halflife", sg.group_halflife)):
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ConfigError(f"infer.signals.{key}: {unknown} are not signal groups; groups: {list(names)}")


def validate_config(cfg: RootCfg) -> None:
    """Raise ConfigError naming the key for any violated invariant (allowed values, ranges, consistency)."""
    w = cfg.data.windowing
    checks = [
        (w.L > 0, "data.windowing.L must be > 0"),
        (w.K >= 0, "data.windowing.K must be >= 0"),
        (w.stride > 0, "data.windowing.stride must be > 0"),
        (0.0 <= w.min_present_fraction <= 1.0, "data.windowing.min_present_fraction must be in [0, 1]"),
        (cfg.data.sampling.dt_minutes > 0, "data.sampling.dt_minutes must be > 0"),
        (0.0 < cfg.train.p_mask < 1.0, "train.p_mask must be in (0, 1)"),
        (0.0 < cfg.infer.p_score < 1.0, "infer.p_score must be in (0, 1)"),
        (0.0 <= cfg.train.group_mask_prob <= 1.0, "train.group_mask_prob must be in [0, 1]"),
        (
            cfg.infer.score_masks != "group" or cfg.train.group_mask_prob > 0,
            "infer.score_masks=group needs a model trained with train.group_mask_prob > 0 (e.g. 0.5): a model "
            "that never saw a whole signal hidden cannot predict it from the others",
        ),
        (cfg.train.batch_size > 0 and cfg.train.epochs > 0, "train.batch_size and train.epochs must be > 0"),
        (cfg.infer.topn_features > 0, "infer.topn_features must be > 0"),
        (0.0 < cfg.infer.calibration.percentile < 100.0, "infer.calibration.percentile must be in (0, 100)"),
        (cfg.infer.calibration.min_windows > 0, "infer.calibration.min_windows must be > 0"),
        (cfg.infer.fleet.min_peers >= 1, "infer.fleet.min_peers must be >= 1 (other turbines scored at the same step)"),
        (0.0 < cfg.infer.calibration.evt_tail_quantile < 1.0, "infer.calibration.evt_tail_quantile must be in (0, 1)"),
        (
            0.0 < cfg.infer.calibration.evt_exceedance_prob < 1.0 - cfg.infer.calibration.evt_tail_quantile,
            "infer.calibration.evt_exceedance_prob must be in (0, 1 - evt_tail_quantile): rarer than the tail",
        ),
        (cfg.infer.calibration.evt_min_excesses >= 10, "infer.calibration.evt_min_excesses must be >= 10"),
        (
            cfg.infer.alerting.hysteresis.T_off <= cfg.infer.alerting.hysteresis.T_on,
            "infer.alerting.hysteresis.T_off must be <= T_on",
        ),
        (
            cfg.infer.alerting.debounce.N_on >= 1 and cfg.infer.alerting.debounce.N_off >= 1,
            "infer.alerting.debounce.N_on and N_off must be >= 1",
        ),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    _check_signals(cfg)
    agg = cfg.infer.aggregation
    if (agg.name == "recent_weighted") != (agg.halflife_steps is not None):
        raise ConfigError("infer.aggregation.halflife_steps is required by, and only used by, name=recent_weighted")
    if (agg.name == "feature_topk") != (agg.k is not None) or (agg.k is not None and agg.k < 1):
        raise ConfigError("infer.aggregation.k (>= 1) is required by, and only used by, name=feature_topk")
    _check_splits(cfg)
    _check_channels(cfg)
    spec_from_config(cfg)  # the channels, features and flag rules, checked once by the PipelineSpec
    _check_model(cfg)
    per_signal = cfg.infer.score == ScoreKind.per_signal
    if cfg.train.group_mask_prob > 0 or cfg.infer.score_masks == "group" or cfg.features.context or per_signal:
        from scada_tcn.trainer.config.groups import feature_groups  # imports the registry, which imports this module

        feature_groups(cfg)
