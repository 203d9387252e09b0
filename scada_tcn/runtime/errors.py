"""Exceptions of scada-tcn (each subclasses ValueError with a message that says what to fix), and the strict-keys
check every serialised record applies."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class SpecError(ValueError):
    """A preprocessing spec (channels, features, flags, binning) is inconsistent."""


class InputError(ValueError):
    """Raw input data breaks its contract (shape, dtype, time order, unknown channel)."""


class ScalerError(ValueError):
    """A scaler does not match the columns it is applied to, or cannot be fitted."""


class BundleError(ValueError):
    """A deployment bundle is incomplete, tampered with, or does not match its declared dims."""


class ConfigError(ValueError):
    """A setting is unknown, mistyped or breaks an invariant: the trainer's config (YAML groups and overrides) or
    the daemon's runtime.yaml (and SCADA_RT_* environment). The message names the dotted key."""


def check_keys(d: object, allowed: Iterable[str], where: str, error: type[ValueError]) -> dict[str, Any]:
    """`d` as a mapping with exactly the keys `allowed` (the strict-schema rule of every serialised record);
    otherwise `error` naming the unknown and missing keys and the allowed ones."""
    keys = list(allowed)
    if not isinstance(d, dict):
        raise error(f"{where}: expected a mapping, got {type(d).__name__}")
    unknown, missing = sorted(set(d) - set(keys)), sorted(set(keys) - set(d))
    if unknown or missing:
        raise error(f"{where}: unknown keys {unknown}, missing keys {missing}; allowed keys: {keys}")
    return d
