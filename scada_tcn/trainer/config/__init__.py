"""The trainer's configuration: schema (typed sections), composition from YAML groups, checks, derivation.

    from scada_tcn.trainer.config import load_config
    cfg = load_config("configs/config.yaml", ["data=la_haute_borne", "train.epochs=3"])

Modules, in dependency order (no module imports one to its right): `schema` (the dataclasses) -> `derive`
(the PipelineSpec a config implies) -> `groups` (feature mask groups) -> `checks` (cross-field invariants) ->
`compose` (YAML groups, overrides, `load_config`). Errors are `scada_tcn.runtime.errors.ConfigError`.
"""

from scada_tcn.runtime.errors import ConfigError
from scada_tcn.trainer.config.compose import (
    compose,
    load_config,
    save_resolved,
    split_overrides,
    to_container,
    to_root,
)
from scada_tcn.trainer.config.schema import GROUPS, DataCfg, RootCfg

__all__ = [
    "GROUPS",
    "ConfigError",
    "DataCfg",
    "RootCfg",
    "compose",
    "load_config",
    "save_resolved",
    "split_overrides",
    "to_container",
    "to_root",
]
