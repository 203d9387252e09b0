"""What a config implies for the preprocessing contract: the `PipelineSpec` the edge rebuilds features with.

`spec_from_config` is the one mapping from the trainer's config to `scada_tcn.runtime.spec.PipelineSpec`; the
registries, the mask groups and the bundle all derive from its result. Pure: no I/O.
"""

from __future__ import annotations

from scada_tcn.runtime.errors import ConfigError, SpecError
from scada_tcn.runtime.flags import compile_rules
from scada_tcn.runtime.spec import PipelineSpec, RollingSpec, YawErrorSpec
from scada_tcn.trainer.config.schema import RootCfg

__all__ = ["spec_from_config"]


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
        )
        compile_rules(spec)
    except SpecError as e:
        raise ConfigError(f"features/flags config: {e}") from e
    if f.output_ordering.explicit and list(f.output_ordering.feature_names) != list(spec.feature_names):
        raise ConfigError(
            "features.output_ordering.feature_names differs from the order the feature config produces:\n"
            f"  config:   {list(f.output_ordering.feature_names)}\n  produced: {list(spec.feature_names)}"
        )
    return spec
