"""The trainer-only vocabularies of the config schema, as `StrEnum`s that OmegaConf validates by name.

The choices the edge also reads (binning, angle units, scoring masks and aggregation, calibration method) live in
`scada_tcn.runtime.vocab`; these are the ones only the trainer acts on.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "DataFormat",
    "Device",
    "Dilations",
    "FaultPooling",
    "FlagSourceType",
    "ForecastSummary",
    "LabelRule",
    "LabelSource",
    "Norm",
    "Optimizer",
    "ScalerType",
    "Scheduler",
    "SplitMethod",
]


class Device(StrEnum):
    auto = "auto"  # CUDA when torch sees one, else the CPU
    cpu = "cpu"
    cuda = "cuda"


class DataFormat(StrEnum):
    auto = "auto"  # by file extension
    csv = "csv"
    parquet = "parquet"


class SplitMethod(StrEnum):
    time = "time"  # train/val/test time ranges
    turbine = "turbine"  # train/val/test turbine lists


class LabelSource(StrEnum):
    file = "file"


class LabelRule(StrEnum):
    window_any = "window_any"  # any labelled step in the window
    window_last = "window_last"  # the label of the window's last step
    horizon_any = "horizon_any"  # any labelled step in the K forecast steps


class ScalerType(StrEnum):
    robust = "robust"


class FlagSourceType(StrEnum):
    rules = "rules"  # expressions over channels
    columns = "columns"  # bare channel names, nonzero -> 1


class Dilations(StrEnum):
    powers_of_two = "powers_of_two"
    explicit = "explicit"


class ReceptiveFieldRule(StrEnum):
    """What the model's receptive field RF must be against the window length L."""

    streamable = "streamable"  # RF <= L: the window's newest step sees its whole receptive field, so the step graph
    # (one step at a time, with layer state) equals the window graph's newest position and the edge can stream
    covers_window = "covers_window"  # RF >= L: every output sees the whole window (window engine only)
    any = "any"


class Norm(StrEnum):
    none = "none"
    weight_norm = "weight_norm"
    layer_norm = "layer_norm"


class ForecastSummary(StrEnum):
    last = "last"


class FaultPooling(StrEnum):
    mean = "mean"


class Optimizer(StrEnum):
    adamw = "adamw"


class Scheduler(StrEnum):
    none = "none"
    cosine = "cosine"
