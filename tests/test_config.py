"""Config composition and strictness: groups, overrides, unknown keys, wrong types, invariants."""

from pathlib import Path

import pytest

from scada_tcn.runtime.errors import ConfigError
from scada_tcn.trainer.config import compose, load_config, save_resolved, to_container, to_root
from scada_tcn.trainer.config.derive import spec_from_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "config.yaml"


def test_default_composition_picks_groups_from_data_file():
    cfg = load_config(CONFIG)
    assert cfg.data.name == "synthetic"
    assert cfg.flags.flag_names[0] == "stopped" and "curtailed" in cfg.flags.flag_names  # flags/status.yaml
    assert cfg.model.heads.fault.enabled and cfg.model.heads.fault.C == len(cfg.data.labels.class_names)


def test_group_choice_and_dotted_overrides():
    cfg = load_config(
        CONFIG, ["data=la_haute_borne", "train.epochs=3", "output_dir=/tmp/x", "data.paths.processed_dir=/tmp/p"]
    )
    assert cfg.data.name == "la_haute_borne"
    assert cfg.flags.flag_names == ["stopped", "low_wind", "pitched"]
    assert not cfg.model.heads.fault.enabled
    assert (cfg.train.epochs, cfg.output_dir, cfg.data.paths.processed_dir) == (3, "/tmp/x", "/tmp/p")


def test_command_line_group_beats_data_file_defaults():
    cfg = load_config(CONFIG, ["flags=rules", "model=with_faults"])
    assert cfg.flags.flag_names == ["stopped", "low_wind", "pitched"]


@pytest.mark.parametrize(
    "override, needle",
    [
        (["train.epoch=3"], "unknown key 'train.epoch'; allowed keys under 'train': ["),
        (["data.paths.raw=/x"], "unknown key 'data.paths.raw'"),
        (["train.epochs=abc"], "train.epochs"),
        (["device=tpu"], "key 'device': Invalid value 'tpu', expected one of [auto, cpu, cuda]"),
        (["data=nope"], "'la_haute_borne', 'synthetic']"),
        (["data.windowing.L=400", "model.receptive_field=covers_window"], "shorter than data.windowing.L=400"),
        (["data.windowing.L=100"], "longer than data.windowing.L=100, so the edge could not stream it"),
        (["data.windowing.K=0"], "forecast.enabled=true needs data.windowing.K > 0"),
        (["model.heads.fault.enabled=false"], "data.labels.enabled=true needs model.heads.fault.enabled=true"),
        (["model.heads.fault.C=3"], "model.heads.fault.C=3 must equal len(data.labels.class_names)=6"),
        (["features.raw_channels=[wind_speed,foo]"], "features.raw_channels: unknown channels ['foo']"),
        (["data.qc.dedupe_rule=median"], "key 'data.qc.dedupe_rule': Invalid value 'median', expected one of [first"),
        (["infer.score_masks=grup"], "key 'infer.score_masks': Invalid value 'grup', expected one of [element, group]"),
        (["data.qc.clamp.nope=[0,1]"], "data.qc.clamp: unknown channels ['nope']"),
        (["features.angular_channels=[power]"], "features.yaw_error: 'wind_dir' must be an angular channel"),
        (["train.p_mask=1.5"], "train.p_mask must be in (0, 1)"),
        (["data.splits.val_range=[2024-02-01T00:00:00+00:00,2024-03-10T00:00:00+00:00]"], "overlap"),
        (["data.splits.train_range=[2024-01-01,2024-03-01]"], "has no UTC offset"),
        (["data.splits.train_range=[2024-W01-1T00:00+00:00,2024-03-01T00:00+00:00]"], "is not an ISO-8601 timestamp"),
        (["features.rolling.causal=false"], "features.rolling.causal must be true"),
        (["notakey"], "is not key=value"),
        (
            ["infer.signals.per_turbine=true", "infer.signals.turbine_groups=[gearbx]"],
            "infer.signals.turbine_groups: ['gearbx'] are not signal groups; groups: [",
        ),
        (["infer.signals.turbine_groups=[power]"], "set per_turbine=true"),
        (
            ["infer.signals.group_halflife={gearbx: 72}"],
            "infer.signals.group_halflife: ['gearbx'] are not signal groups; groups: [",
        ),
        (["infer.signals.group_halflife={power: 0}"], "half-lives must be finite numbers of steps > 0, got {'power'"),
        (
            [
                "infer.signals.aggregator=cusum",
                "infer.signals.halflife_steps=null",
                "infer.signals.cusum_k=1",
                "infer.signals.group_halflife={power: 72}",
            ],  # fmt: skip
            "infer.signals.group_halflife: half-lives per group are for aggregator=ewma only",
        ),
    ],
)
def test_bad_configs_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(CONFIG, override)
    assert needle in str(e.value)


def test_unknown_key_in_yaml_file_is_refused(tmp_path):
    for d in ("data", "features", "flags", "model", "train", "infer"):
        (tmp_path / d).mkdir()
        for f in (CONFIG.parent / d).glob("*.yaml"):
            (tmp_path / d / f.name).write_text(f.read_text())
    (tmp_path / "train" / "default.yaml").write_text((CONFIG.parent / "train/default.yaml").read_text() + "lr: 0.1\n")
    (tmp_path / "config.yaml").write_text(CONFIG.read_text())
    with pytest.raises(ConfigError, match="unknown key 'train.lr'"):
        load_config(tmp_path / "config.yaml")


def test_missing_config_file_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(CONFIG, ["train.epochs=2"])
    save_resolved(cfg, tmp_path / "config.yaml")
    from omegaconf import OmegaConf

    again = to_root(OmegaConf.to_container(OmegaConf.load(tmp_path / "config.yaml")))
    assert to_container(again) == to_container(cfg)
    assert to_root(to_container(cfg)) == cfg


def test_explicit_ordering_must_match_derived_order():
    cfg = load_config(CONFIG)
    names = list(spec_from_config(cfg).feature_names)
    ok = load_config(
        CONFIG,
        ["features.output_ordering.explicit=true", f"features.output_ordering.feature_names=[{','.join(names)}]"],
    )
    assert list(spec_from_config(ok).feature_names) == names
    swapped = names[1:2] + names[:1] + names[2:]
    with pytest.raises(ConfigError, match="differs from the order"):
        load_config(
            CONFIG,
            ["features.output_ordering.explicit=true", f"features.output_ordering.feature_names=[{','.join(swapped)}]"],
        )


def test_flag_rule_on_unknown_channel_is_refused():
    with pytest.raises(
        ConfigError, match="flags.sources.mapping: flag 'stopped': rule 'tower_sway > 3': unknown channel"
    ):
        load_config(CONFIG, ["flags.sources.mapping.stopped=tower_sway > 3"])


def test_compose_keeps_data_file_defaults_out_of_the_result():
    node = compose(CONFIG)
    assert "defaults" not in node and "defaults" not in node.data


def test_built_in_scoring_defaults_are_the_shipped_ones():
    # the schema's defaults apply to keys a user's own YAML leaves out: they must be the recommended method
    from scada_tcn.trainer.config.schema import RootCfg

    shipped, built_in = to_container(load_config(CONFIG)), to_container(RootCfg())
    for section, keys in (
        ("infer", ("score", "score_masks", "p_score", "aggregation", "calibration", "alerting", "fleet")),
        ("train", ("group_mask_prob",)),
    ):
        for key in keys:
            assert built_in[section][key] == shipped[section][key], f"{section}.{key}"
    method = {k: v for k, v in shipped["infer"]["signals"].items() if k not in ("directions", "skip_flags")}
    assert {k: built_in["infer"]["signals"][k] for k in method} == method


def test_split_bounds_are_read_as_every_stamp_is():
    """A split's bounds are read by the stamp grammar the tables and the daemon use (`runtime.stamps`); before,
    the check read them with Python's parser (week dates passed) and the split with pandas'."""
    from scada_tcn.trainer.config.checks import split_bound_ns

    want = 1704067200 * 10**9
    assert split_bound_ns("k", "2024/01/01 01:00+01") == split_bound_ns("k", " 2024-01-01T00:00:00Z") == want
    assert split_bound_ns("k", "2024-01-01T00:00:00.000000001+00:00") == want + 1
