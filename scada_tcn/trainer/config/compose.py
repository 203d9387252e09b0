"""Typed, strict configuration (spec section B), composed from YAML groups with dotted overrides.

    cfg = load_config("configs/config.yaml", ["data=la_haute_borne", "train.epochs=3"])

`configs/config.yaml` names one file per group under `defaults:`; `group=name` on the command line picks
`configs/<group>/<name>.yaml`, and a group file may itself choose other groups in its own `defaults:`
(the command line still wins). Dotted `key=value` overrides are merged last. OmegaConf structured configs
do the parsing, merging and type checks: an unknown or misspelt key or a wrong type raises `ConfigError`
naming the key and the allowed keys; `validate_config` then checks the cross-field invariants.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scada_tcn.runtime.errors import ConfigError
from scada_tcn.trainer.config.checks import validate_config
from scada_tcn.trainer.config.schema import GROUPS, RootCfg

__all__ = ["compose", "load_config", "save_resolved", "split_overrides", "to_container", "to_root"]


def _load_yaml(path: Path) -> DictConfig:
    try:
        node = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return node


def _pop_defaults(node: DictConfig, path: Path) -> dict[str, str]:
    if "defaults" not in node:
        return {}
    d = OmegaConf.to_container(node.pop("defaults"))
    if not isinstance(d, dict) or not all(isinstance(v, str) for v in d.values()):
        raise ConfigError(f"{path}: 'defaults' must map group names to file names, e.g. {{data: synthetic}}")
    unknown = sorted(set(d) - set(GROUPS))
    if unknown:
        raise ConfigError(f"{path}: unknown groups {unknown} in defaults; groups are {list(GROUPS)}")
    return d


def _group_file(config_dir: Path, group: str, name: str) -> Path:
    path = config_dir / group / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        raise ConfigError(f"{group}={name}: no file {path}; available: {choices}")
    return path


def split_overrides(overrides: list[str]) -> tuple[dict[str, str], list[str]]:
    """Separate `group=name` choices from dotted `key=value` overrides."""
    groups: dict[str, str] = {}
    dotted: list[str] = []
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} is not key=value (e.g. train.epochs=3 or data=la_haute_borne)")
        key, value = ov.split("=", 1)
        if key in GROUPS:
            groups[key] = value
        else:
            dotted.append(ov)
    return groups, dotted


def _merge(base: Any, *others: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, *others)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where}: {_describe(e)}") from e


def _describe(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    msg = str(e).splitlines()[0]
    if key and "Key" in type(e).__name__:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        allowed = _allowed_keys(parent)
        return f"unknown key '{key}'; allowed keys under '{parent or '<root>'}': {allowed}"
    return f"key '{key}': {msg}" if key else msg


def _allowed_keys(dotted_parent: str) -> list[str]:
    node: Any = OmegaConf.structured(RootCfg)
    for part in filter(None, dotted_parent.split(".")):
        node = node.get(part) if isinstance(node, DictConfig) else None
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def compose(config_path: str | Path, overrides: list[str] | None = None) -> DictConfig:
    """Compose the root file, its group files and the overrides into one checked DictConfig."""
    path = Path(config_path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (run from the repository root or pass --config PATH)")
    config_dir = path.parent
    root = _load_yaml(path)
    choices = _pop_defaults(root, path)
    cli_groups, dotted = split_overrides(list(overrides or []))
    choices.update(cli_groups)
    if "data" in choices:  # a data file may pick matching feature/flag groups; the command line still wins
        data_node = _load_yaml(_group_file(config_dir, "data", choices["data"]))
        for g, n in _pop_defaults(data_node, config_dir / "data").items():
            if g not in cli_groups:
                choices[g] = n
    sections = {}
    for group in GROUPS:
        if group not in choices:
            continue
        node = _load_yaml(_group_file(config_dir, group, choices[group]))
        _pop_defaults(node, config_dir / group)
        sections[group] = node
    schema = OmegaConf.structured(RootCfg)
    cfg = _merge(schema, OmegaConf.create(sections), root, where=str(path))
    try:
        dot = OmegaConf.from_dotlist(dotted)
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad override in {dotted}: {_describe(e)}") from e
    except yaml.YAMLError as e:  # a value YAML reads as syntax: ',' '|' '*' ...
        bad = [o for o in dotted if not _yaml_value_ok(o.partition("=")[2])] or dotted
        key, _, value = bad[0].partition("=")
        raise ConfigError(f"override {bad[0]!r}: its value is not a YAML value ({str(e).splitlines()[0]}); quote "
                          f"it: {key}='{value}'") from e  # fmt: skip
    cfg = _merge(cfg, dot, where="command-line override")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"required keys have no value: {missing} (set them in the YAML or as key=value)")
    return cfg


def _yaml_value_ok(value: str) -> bool:
    try:
        yaml.safe_load(value)
    except yaml.YAMLError:
        return False
    return True


def to_root(cfg: DictConfig | dict[str, Any]) -> RootCfg:
    """Typed RootCfg from a composed (or saved, resolved) config, validated."""
    node = cfg if isinstance(cfg, DictConfig) else _merge(OmegaConf.structured(RootCfg), cfg, where="saved config")
    root = OmegaConf.to_object(node)
    assert isinstance(root, RootCfg)
    validate_config(root)
    return root


def load_config(config_path: str | Path, overrides: list[str] | None = None) -> RootCfg:
    """compose + to_root: the one call every command makes."""
    return to_root(compose(config_path, overrides))


def to_container(cfg: RootCfg) -> dict[str, Any]:
    """Plain dict of a config (for checkpoints and JSON)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)  # type: ignore[return-value]


def save_resolved(cfg: RootCfg, path: str | Path) -> None:
    """Write the resolved config beside an artifact."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
