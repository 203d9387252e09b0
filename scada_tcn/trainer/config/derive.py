"""What a config implies for the edge: the one mapping from the trainer's config to the runtime's records.

`spec_from_config` gives the `PipelineSpec` the edge rebuilds features with (the registries, the mask groups and
the bundle derive from it); `alerting_params` and `fleet_params` the bundle's alerting and fleet sections, used
by the export and by offline inference from a checkpoint alike. Pure: no I/O.
"""

from __future__ import annotations

from scada_tcn.runtime.bundle import AlertingParams, FleetParams
from scada_tcn.runtime.errors import ConfigError, SpecError
from scada_tcn.runtime.flags import compile_rules
from scada_tcn.runtime.spec import PipelineSpec, RollingSpec, YawErrorSpec
from scada_tcn.trainer.config.schema import RootCfg

__all__ = ["alerting_params", "fleet_params", "spec_from_config"]


def spec_from_config(cfg: RootCfg) -> PipelineSpec:
    """The preprocessing contract of this config (winsor caps empty: they are fitted by scada-prepare)."""
    f, d = cfg.features, cfg.data
    try:
        spec = PipelineSpec(
            dt_seconds=d.sampling.dt_minutes * 60,
            channels=tuple(d.columns),
            dedupe=d.qc.dedupe_rule,
            aggregation=dict(d.qc.aggregation),
            valid_range={c: (float(lo), float(hi)) for c, (lo, hi) in d.qc.clamp.items()},
            winsor_caps={},
            feature_channels=tuple(f.raw_channels),
            angular_channels=tuple(f.angular_channels),
            angle_units=f.angle_units,
            yaw_error=YawErrorSpec(
                f.yaw_error.wind_dir_col,
                f.yaw_error.nacelle_yaw_col,
                f.yaw_error.output_name,
                None if f.yaw_error.min_wind_speed is None else f.yaw_error.wind_speed_col,
                f.yaw_error.min_wind_speed,
            )
            if f.yaw_error.enabled
            else None,
            deltas=tuple(f.deltas.channels) if f.deltas.enabled else (),
            rolling=RollingSpec(tuple(f.rolling.channels), tuple(f.rolling.windows), tuple(f.rolling.stats))
            if f.rolling.enabled
            else None,
            flag_names=tuple(cfg.flags.flag_names),
            flag_rules=dict(cfg.flags.sources.mapping),
            fill_value=float(f.fill_value_c),
            differences={k: tuple(v) for k, v in f.differences.items()},
            repeat_channels=tuple(f.repeat_channels),
            hold_s=dict(d.qc.hold_s),
        )
        compile_rules(spec)
    except SpecError as e:
        raise ConfigError(_config_key(str(e))) from e
    if f.output_ordering.explicit and list(f.output_ordering.feature_names) != list(spec.feature_names):
        raise ConfigError(
            "features.output_ordering.feature_names differs from the order the feature config produces:\n"
            f"  config:   {list(f.output_ordering.feature_names)}\n  produced: {list(spec.feature_names)}"
        )
    return spec


def stuck_feature(spec: PipelineSpec, channel: str) -> str | None:
    """The feature a stuck check of `channel` reads the model's expectation from: the channel itself when it is a
    feature, else the difference it is the first term of (gearbox_oil_temp -> gearbox_oil_above_ambient)."""
    if channel in spec.feature_names:
        return channel
    return next((name for name, (a, _) in spec.differences.items() if a == channel), None)


# the PipelineSpec's field names, as the config keys they come from (a SpecError starts with the field name)
_SPEC_TO_CONFIG = {
    "channels": "data.columns",
    "dedupe": "data.qc.dedupe_rule",
    "aggregation": "data.qc.aggregation",
    "valid_range": "data.qc.clamp",
    "feature_channels": "features.raw_channels",
    "angular_channels": "features.angular_channels",
    "angle_units": "features.angle_units",
    "yaw_error": "features.yaw_error",
    "differences": "features.differences",
    "deltas": "features.deltas.channels",
    "rolling.channels": "features.rolling.channels",
    "rolling": "features.rolling",
    "flag_rules": "flags.sources.mapping",
    "flag": "flags.sources.mapping: flag",
    "feature names": "features (the feature names they produce)",
    "repeat_channels": "features.repeat_channels",
    "hold_s": "data.qc.hold_s",
}


def _config_key(message: str) -> str:
    """A SpecError message, its leading spec field renamed to the config key a user edits."""
    for field, key in sorted(_SPEC_TO_CONFIG.items(), key=lambda kv: -len(kv[0])):
        if message.startswith(field) and message[len(field) : len(field) + 1] in (":", ".", " "):
            return key + message[len(field) :]
    return f"features/flags config: {message}"


def alerting_params(cfg: RootCfg) -> AlertingParams:
    """The bundle's alerting section for `cfg` (hysteresis multiples and debounce steps)."""
    a = cfg.infer.alerting
    return AlertingParams(
        T_on=float(a.hysteresis.T_on), T_off=float(a.hysteresis.T_off), N_on=a.debounce.N_on, N_off=a.debounce.N_off
    )


def fleet_params(cfg: RootCfg) -> FleetParams:
    """The bundle's fleet section for `cfg`: fleet-relative scoring, and the window index's present-data rule."""
    f = cfg.infer.fleet
    return FleetParams(
        relative=f.relative, min_peers=f.min_peers, min_present_fraction=float(cfg.data.windowing.min_present_fraction)
    )
