"""The config schema (spec section B): one typed dataclass per section, validated by OmegaConf.

Every field has a default except the ones marked MISSING, which a YAML group or an override must set. The
allowed values of a choice are the members of its `StrEnum` in `scada_tcn.runtime.vocab`, so OmegaConf refuses
an unknown value with the key named, and the edge reads the same vocabulary from the bundle.
Cross-field invariants live in `checks.validate_config`; composition from YAML in `compose`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from scada_tcn.runtime.vocab import (
    AngleUnits,
    BinAggregation,
    CalibrationMethod,
    DedupeRule,
    Direction,
    RollingStat,
    ScoreAggregation,
    ScoreAggregator,
    ScoreKind,
    ScoreMasks,
    SignalBaseline,
)
from scada_tcn.trainer.config.choices import (
    DataFormat,
    Device,
    Dilations,
    FaultPooling,
    FlagSourceType,
    ForecastSummary,
    LabelRule,
    LabelSource,
    Norm,
    Optimizer,
    ReceptiveFieldRule,
    ScalerType,
    Scheduler,
    SplitMethod,
)

GROUPS = ("data", "features", "flags", "model", "train", "infer")


# ---------------------------------------------------------------- data
@dataclass
class PathsCfg:
    raw_dir: str = MISSING  # a CSV/Parquet file or a folder of them
    processed_dir: str = MISSING
    labels_file: str | None = None  # CSV turbine_id,start,end,fault (when labels.enabled)


@dataclass
class IdentifiersCfg:
    turbine_id_col: str | None = "turbine_id"  # null with turbine_id_from_file
    # per-turbine files without an id column: a regular expression searched in each file's name, whose group (or
    # whole match) is the id of every row of the file, e.g. "Turbine_Data_(Kelmarsh_\\d+)_" (Greenbyte)
    turbine_id_from_file: str | None = None
    time_col: str = "timestamp"
    naive_timezone: str | None = None  # zone for stamps without a UTC offset; None refuses them
    # strptime format of the stamps, e.g. "%d.%m.%Y %H:%M" (day-first exports), or "epoch_ms" (every stamp in epoch
    # milliseconds); None: ISO-8601 or epoch seconds
    time_format: str | None = None


@dataclass
class CsvCfg:
    """How the CSV export is written (Parquet files ignore it); scada-export records it for replay."""

    delimiter: str = ","  # "," ";" "\t" or "|"
    decimal: str = "."  # "." or "," (with another delimiter); applies to value cells, not to stamps
    skip_lines: int = 0  # lines before the header (an exporter's preamble), skipped whatever they hold
    encoding: str = "utf-8"  # the files' text encoding, e.g. "cp1252" (Windows exports), "utf-16"


@dataclass
class SamplingCfg:
    dt_minutes: int = 10


@dataclass
class WindowingCfg:
    L: int = 144
    K: int = 6
    stride: int = 1
    min_present_fraction: float = 0.5  # windows with less present input data are not indexed
    include_last: bool = False  # also index each turbine's last complete window when the stride skips it


@dataclass
class SplitsCfg:
    method: SplitMethod = SplitMethod.time
    train_range: list[str] | None = None  # [start, end) ISO-8601
    val_range: list[str] | None = None
    test_range: list[str] | None = None
    # method=turbine: turbine ids or glob patterns (fnmatch: * ? [seq] [!seq]), e.g. ["train_??[!05]"]; a
    # turbine matching two splits, or a pattern matching no turbine, stops scada-prepare
    train_turbines: list[str] | None = None
    val_turbines: list[str] | None = None
    test_turbines: list[str] | None = None


@dataclass
class LabelsCfg:
    enabled: bool = False
    label_source: LabelSource = LabelSource.file
    label_rule: LabelRule = LabelRule.window_any
    class_names: list[str] = field(default_factory=list)  # class 0 is the normal class
    multilabel: bool = False


@dataclass
class RulTargetCfg:
    """An optional per-step remaining-useful-life target column (in steps), never a feature."""

    enabled: bool = False
    column: str = "rul"  # column of the raw table; must not be mapped in data.columns
    cap: float = 125.0  # training target min(rul, cap) (piecewise-linear RUL); also the loss scale


@dataclass
class QcCfg:
    clamp: dict[str, list[float]] = field(default_factory=dict)  # channel -> [min, max]; outside -> missing
    winsorize: dict[str, list[float]] = field(default_factory=dict)  # channel -> [low_q, high_q] (train split)
    dedupe_rule: DedupeRule = DedupeRule.last
    aggregation: dict[str, BinAggregation] = field(default_factory=dict)  # channel -> how its bins aggregate
    hold_s: dict[str, int] = field(default_factory=dict)  # report-by-exception channel -> seconds a value holds


@dataclass
class DataCfg:
    name: str = MISSING
    format: DataFormat = DataFormat.auto
    paths: PathsCfg = field(default_factory=PathsCfg)
    identifiers: IdentifiersCfg = field(default_factory=IdentifiersCfg)
    csv: CsvCfg = field(default_factory=CsvCfg)
    columns: dict[str, str] = field(default_factory=dict)  # channel -> column in the raw table
    sampling: SamplingCfg = field(default_factory=SamplingCfg)
    windowing: WindowingCfg = field(default_factory=WindowingCfg)
    splits: SplitsCfg = field(default_factory=SplitsCfg)
    labels: LabelsCfg = field(default_factory=LabelsCfg)
    rul: RulTargetCfg = field(default_factory=RulTargetCfg)
    qc: QcCfg = field(default_factory=QcCfg)


# ---------------------------------------------------------------- features and flags
@dataclass
class YawErrorCfg:
    enabled: bool = False
    wind_dir_col: str = "wind_dir"
    nacelle_yaw_col: str = "nacelle_dir"
    output_name: str = "yaw_error"
    min_wind_speed: float | None = None  # yaw error missing below this wind speed (the turbine is not tracking)
    wind_speed_col: str = "wind_speed"  # the channel min_wind_speed applies to


@dataclass
class DeltasCfg:
    enabled: bool = False
    channels: list[str] = field(default_factory=list)


@dataclass
class RollingCfg:
    enabled: bool = False
    windows: list[int] = field(default_factory=list)
    stats: list[RollingStat] = field(default_factory=lambda: [RollingStat.mean, RollingStat.std])
    channels: list[str] = field(default_factory=list)
    causal: bool = True


@dataclass
class ScalerCfg:
    type: ScalerType = ScalerType.robust
    clip_iqr: float | None = None
    scale_angles: bool = False


@dataclass
class OrderingCfg:
    explicit: bool = False
    feature_names: list[str] = field(default_factory=list)


@dataclass
class FeaturesCfg:
    raw_channels: list[str] = MISSING
    angular_channels: list[str] = field(default_factory=list)
    angle_units: AngleUnits = AngleUnits.deg
    yaw_error: YawErrorCfg = field(default_factory=YawErrorCfg)
    differences: dict[str, list[str]] = field(default_factory=dict)  # name -> [a, b]: a - b (e.g. above ambient)
    deltas: DeltasCfg = field(default_factory=DeltasCfg)
    rolling: RollingCfg = field(default_factory=RollingCfg)
    fill_value_c: float = 0.0
    scaler: ScalerCfg = field(default_factory=ScalerCfg)
    output_ordering: OrderingCfg = field(default_factory=OrderingCfg)
    # name -> base columns (channels, yaw error, differences) that carry one physical signal and are hidden
    # together by the group masks; a base not listed is a group of its own (trainer.config.groups)
    mask_groups: dict[str, list[str]] = field(default_factory=dict)
    # base columns that are model inputs only: never hidden at scoring, never scored (e.g. wind_dir: weather)
    context: list[str] = field(default_factory=list)
    # raw channels whose exact step-to-step repeats are recorded for the stuck-signal check (runtime.repeats)
    repeat_channels: list[str] = field(default_factory=list)


@dataclass
class FlagSourcesCfg:
    type: FlagSourceType = FlagSourceType.rules
    mapping: dict[str, str] = field(default_factory=dict)


@dataclass
class FlagsCfg:
    flag_names: list[str] = field(default_factory=list)
    sources: FlagSourcesCfg = field(default_factory=FlagSourcesCfg)
    causal_alignment: bool = True


# ---------------------------------------------------------------- model, train, infer
@dataclass
class TcnCfg:
    D: int = 32
    kernel_size: int = 3
    num_blocks: int = 5
    dilations: Dilations = Dilations.powers_of_two
    dilation_list: list[int] = field(default_factory=list)
    dropout: float = 0.1
    norm: Norm = Norm.weight_norm


@dataclass
class HeadToggleCfg:
    enabled: bool = True


@dataclass
class ForecastHeadCfg:
    enabled: bool = True
    summary: ForecastSummary = ForecastSummary.last
    hidden: int = 128


@dataclass
class FaultHeadCfg:
    enabled: bool = False
    pooling: FaultPooling = FaultPooling.mean
    C: int = 0
    multilabel: bool = False
    hidden: int = 64


@dataclass
class RulHeadCfg:
    enabled: bool = False
    hidden: int = 64


@dataclass
class HeadsCfg:
    recon: HeadToggleCfg = field(default_factory=HeadToggleCfg)
    forecast: ForecastHeadCfg = field(default_factory=ForecastHeadCfg)
    fault: FaultHeadCfg = field(default_factory=FaultHeadCfg)
    rul: RulHeadCfg = field(default_factory=RulHeadCfg)


@dataclass
class ModelCfg:
    tcn: TcnCfg = field(default_factory=TcnCfg)
    heads: HeadsCfg = field(default_factory=HeadsCfg)
    receptive_field: ReceptiveFieldRule = ReceptiveFieldRule.streamable


@dataclass
class LambdasCfg:
    recon: float = 1.0
    pred: float = 1.0
    fault: float = 1.0
    rul: float = 1.0  # used only with model.heads.rul.enabled


@dataclass
class RegimeWeightingCfg:
    enabled: bool = False
    weight_map: dict[str, float] = field(default_factory=dict)  # flag name -> loss weight when active


@dataclass
class LossCfg:
    huber_delta: float = 1.0
    lambdas: LambdasCfg = field(default_factory=LambdasCfg)
    regime_weighting: RegimeWeightingCfg = field(default_factory=RegimeWeightingCfg)


@dataclass
class OptimizerCfg:
    name: Optimizer = Optimizer.adamw
    lr: float = 1e-3
    weight_decay: float = 1e-4


@dataclass
class SchedulerCfg:
    name: Scheduler = Scheduler.none
    warmup_steps: int = 0


@dataclass
class TrainCfg:
    batch_size: int = 64
    epochs: int = 10
    p_mask: float = 0.15
    group_mask_prob: float = 0.5  # share of masked-reconstruction windows hiding one whole feature group
    loss: LossCfg = field(default_factory=LossCfg)
    optimizer: OptimizerCfg = field(default_factory=OptimizerCfg)
    scheduler: SchedulerCfg = field(default_factory=SchedulerCfg)
    grad_clip: float | None = 1.0
    early_stopping_patience: int = 5
    max_steps_per_epoch: int | None = None
    num_workers: int = 0
    amp: bool = True  # automatic mixed precision, used on CUDA only


@dataclass
class AggregationCfg:
    name: ScoreAggregation = ScoreAggregation.masked_mean
    halflife_steps: float | None = None  # recent_weighted only
    k: int | None = None  # feature_topk only: mean of the k worst features, each over its normal error level


@dataclass
class CalibrationCfg:
    enabled: bool = True
    method: CalibrationMethod = CalibrationMethod.percentile
    percentile: float = 99.5
    per_turbine: bool = True
    per_regime: bool = False
    min_windows: int = 200
    evt_tail_quantile: float = 0.95  # evt: the tail starts at this quantile of the normal scores
    evt_exceedance_prob: float = 0.001  # evt: threshold exceeded by this share of normal windows
    evt_min_excesses: int = 30  # evt: fewer excesses than this -> the group falls back


@dataclass
class HysteresisCfg:
    T_on: float = 1.0  # multiples of the calibrated threshold
    T_off: float = 0.8


@dataclass
class DebounceCfg:
    N_on: int = 3
    N_off: int = 6


@dataclass
class AlertingCfg:
    hysteresis: HysteresisCfg = field(default_factory=HysteresisCfg)
    debounce: DebounceCfg = field(default_factory=DebounceCfg)


@dataclass
class FleetCfg:
    relative: bool = False  # threshold and alert on score - median(other turbines' scores at the same step)
    min_peers: int = 1  # other turbines scored at that step needed for a fleet-relative score


@dataclass
class SignalsCfg:
    """Per-signal scoring (infer.score=per_signal): residuals at the newest step, one level per monitored signal."""

    directions: dict[str, Direction] = field(default_factory=dict)  # base column -> above | below | both (default)
    monitor_derived: bool = False  # deltas and rolling statistics get levels of their own too
    unmonitored: list[str] = field(default_factory=list)  # base columns predicted and used, but given no level
    aggregator: ScoreAggregator = ScoreAggregator.ewma
    halflife_steps: float | None = 36.0  # ewma
    group_halflife: dict[str, float] = field(default_factory=dict)  # ewma: these groups' half-lives (steps) instead
    cusum_k: float | None = None  # cusum allowance, in normal-residual units
    max_gap_steps: int = 144  # cusum: missing steps after which the sum restarts
    # fleet: minus the other turbines' median at the same step; fleet_all: minus every turbine's, its own included;
    # fleet_and_own: the smaller of fleet's deviation and the turbine's own (it must depart from both)
    baseline: SignalBaseline = SignalBaseline.fleet
    min_peers: int = 1  # fleet baseline: other turbines needed at the step
    skip_flags: list[str] = field(default_factory=list)  # steps with one of these flags on are not scored
    percentile: float = 100.0  # each monitored feature's level: this percentile of its aggregate on validation ...
    level_margin: float = 2.0  # ... times this margin (>= 1: room for the months validation did not see)
    level_centred: bool = False  # true: median + margin x (percentile - median), the margin on the spread only
    # stuck-signal checks, one per features.repeat_channels entry (the channel, or its difference, as the feature)
    stuck_move_quantile: float = 0.5  # "expected to move": the prediction changed more than this quantile
    stuck_margin: float = 1.5  # a stuck check's level: margin x its longest run on validation ...
    stuck_min_run: int = 18  # ... and at least this many steps
    per_turbine: bool = False  # levels per turbine (with enough validation steps), else pooled
    min_steps: int = 2000  # validation steps a turbine needs for levels of its own
    turbine_groups: list[str] = field(default_factory=list)  # per_turbine: only these groups' levels ([]: all)


@dataclass
class InferCfg:
    score: ScoreKind = ScoreKind.per_signal  # per_signal (a level per signal) | window_mean (one number per window)
    signals: SignalsCfg = field(default_factory=SignalsCfg)
    p_score: float = 0.25
    score_seed: int = 1234
    score_masks: ScoreMasks = ScoreMasks.group  # group: one pass per signal group; element: P = round(1/p_score)
    aggregation: AggregationCfg = field(default_factory=AggregationCfg)
    topn_features: int = 5
    calibration: CalibrationCfg = field(default_factory=CalibrationCfg)
    alerting: AlertingCfg = field(default_factory=AlertingCfg)
    fleet: FleetCfg = field(default_factory=FleetCfg)


@dataclass
class RootCfg:
    experiment_name: str = "default"
    seed: int = 0
    device: Device = Device.auto
    output_dir: str = "artifacts/default"
    data: DataCfg = field(default_factory=DataCfg)
    features: FeaturesCfg = field(default_factory=FeaturesCfg)
    flags: FlagsCfg = field(default_factory=FlagsCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    infer: InferCfg = field(default_factory=InferCfg)
