"""Command-line entry points of the trainer side. Thin: parse, load the config, call one function."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from scada_tcn.extras import COMMANDS

ConfigOpt = Annotated[str, typer.Option("--config", "-c", help="Root config file; groups are read beside it.")]
Overrides = Annotated[
    list[str] | None,
    typer.Argument(
        help="Group choices (data=la_haute_borne) and dotted overrides (train.epochs=3).", show_default=False
    ),
]


def _load_config(config: str, overrides: list[str]):
    from scada_tcn.trainer.config import load_config

    return load_config(config, overrides)


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


prepare_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@prepare_app.command(help=COMMANDS["scada-prepare"].help)
def prepare_cmd(overrides: Overrides = None, config: ConfigOpt = "configs/config.yaml") -> None:
    from scada_tcn.trainer.data.prepare import format_summary, prepare

    try:
        cfg = _load_config(config, overrides or [])
        summary = prepare(cfg)
    except ValueError as e:  # our ConfigError/InputError/SpecError all subclass ValueError
        _fail(e)
    print(format_summary(summary))
    print(f"wrote {cfg.data.paths.processed_dir}", file=sys.stderr)


train_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@train_app.command(help=COMMANDS["scada-train"].help)
def train_cmd(
    overrides: Overrides = None,
    config: ConfigOpt = "configs/config.yaml",
    resume: Annotated[str | None, typer.Option(help="Continue from a last.pt of the same setup.")] = None,
) -> None:
    from scada_tcn.trainer.training.fit import fit

    try:
        cfg = _load_config(config, overrides or [])
        best = fit(cfg, resume=resume, log=lambda m: print(m, file=sys.stderr, flush=True))
    except ValueError as e:
        _fail(e)
    print(best)


infer_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@infer_app.command(help=COMMANDS["scada-infer"].help)
def infer_cmd(
    checkpoint: Annotated[str | None, typer.Option(help="best.pt: torch engine.")] = None,
    bundle: Annotated[str | None, typer.Option(help="Bundle folder: onnxruntime engine.")] = None,
    data: Annotated[str | None, typer.Option(help="Prepared data folder (default: the checkpoint's).")] = None,
    split: Annotated[str, typer.Option(help="train | val | test")] = "test",
    out: Annotated[str | None, typer.Option(help="Output folder (default: <run>/infer_<split>_<engine>).")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
) -> None:
    from pathlib import Path

    from scada_tcn.trainer.evaluation.offline import run_batch_inference, setup_from_args

    try:
        setup, run_dir = setup_from_args(checkpoint, bundle, data)
        out_dir = Path(out) if out else run_dir / f"infer_{split}_{setup.engine_name}"
        summary = run_batch_inference(setup, split, out_dir, batch_size)
    except ValueError as e:
        _fail(e)
    print(json.dumps(summary, indent=2))


evaluate_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@evaluate_app.command(help=COMMANDS["scada-evaluate"].help)
def evaluate_cmd(
    checkpoint: Annotated[str | None, typer.Option(help="best.pt: torch engine.")] = None,
    bundle: Annotated[str | None, typer.Option(help="Bundle folder: onnxruntime engine.")] = None,
    data: Annotated[str | None, typer.Option(help="Prepared data folder (default: the checkpoint's).")] = None,
    out: Annotated[str | None, typer.Option(help="Report folder (default: <run>/eval_<engine>).")] = None,
    drift: Annotated[bool, typer.Option("--drift", help="Also compare the test split against validation.")] = False,
    max_lead_hours: Annotated[float, typer.Option(help="An alert up to this long before a fault detects it.")] = 48.0,
    plots: Annotated[bool, typer.Option("--plots/--no-plots")] = True,
    labels: Annotated[
        str | None,
        typer.Option(
            help="Fault events CSV (turbine_id,start,end,fault), e.g. from scada-inject; replaces the prepared labels."
        ),
    ] = None,
) -> None:
    from pathlib import Path

    from scada_tcn.trainer.evaluation.evaluate import evaluate
    from scada_tcn.trainer.evaluation.offline import setup_from_args

    try:
        setup, run_dir = setup_from_args(checkpoint, bundle, data)
        out_dir = Path(out) if out else run_dir / f"eval_{setup.engine_name}"
        m = evaluate(setup, out_dir, drift=drift, max_lead_hours=max_lead_hours, plots=plots, labels_file=labels)
    except ValueError as e:
        _fail(e)
    keys = ("anomaly", "events", "alerts", "rul")
    print(json.dumps({k: m[k] for k in keys if k in m}, indent=2))
    print(f"reports in {out_dir}", file=sys.stderr)


inject_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@inject_app.command(help=COMMANDS["scada-inject"].help)
def inject_cmd(
    overrides: Overrides = None,
    config: ConfigOpt = "configs/config.yaml",
    turbine: Annotated[str, typer.Option(help="Turbine id to inject into.")] = ...,
    out: Annotated[str, typer.Option(help="Output folder.")] = ...,
    seed: Annotated[int, typer.Option(help="Seed of the fault parameters.")] = 0,
    hours: Annotated[float, typer.Option(help="Duration of each fault (capped at half its slot).")] = 72.0,
    start: Annotated[str | None, typer.Option(help="Period start, ISO-8601 (default: test range).")] = None,
    end: Annotated[str | None, typer.Option(help="Period end, ISO-8601 (default: test range).")] = None,
) -> None:
    from scada_tcn.trainer.sources.inject import inject_table

    try:
        cfg = _load_config(config, overrides or [])
        paths = inject_table(cfg.data, turbine, out, seed=seed, hours=hours, start=start, end=end)
    except ValueError as e:
        _fail(e)
    for p in paths.values():
        print(p)
