"""Exceptions of scada-tcn. Each subclasses ValueError and carries a message that says what to fix."""


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
