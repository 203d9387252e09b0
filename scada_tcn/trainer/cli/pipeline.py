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


def _stderr(message: str) -> None:
    """A progress or log line, on stderr (stdout carries the command's result)."""
    print(message, file=sys.stderr, flush=True)


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
        best = fit(cfg, resume=resume, log=_stderr)
    except ValueError as e:
        _fail(e)
    print(best)


infer_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


GraphOption = Annotated[
    str,
    typer.Option(
        help="With --bundle: which graph scores a per-signal bundle's steps: auto (its step graph where it has one, "
        "as the edge's compute.engine auto), step, or window (the window graph, L times the arithmetic)."
    ),
]


@infer_app.command(help=COMMANDS["scada-infer"].help)
def infer_cmd(
    checkpoint: Annotated[str | None, typer.Option(help="best.pt: torch engine.")] = None,
    bundle: Annotated[str | None, typer.Option(help="Bundle folder: onnxruntime engine.")] = None,
    data: Annotated[str | None, typer.Option(help="Prepared data folder (default: the checkpoint's).")] = None,
    split: Annotated[str, typer.Option(help="train | val | test")] = "test",
    out: Annotated[str | None, typer.Option(help="Output folder (default: <run>/infer_<split>_<engine>).")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    graph: GraphOption = "auto",
) -> None:
    from pathlib import Path

    from scada_tcn.trainer.evaluation.offline import run_batch_inference, setup_from_args

    try:
        setup, run_dir = setup_from_args(checkpoint, bundle, data, graph)
        setup.log = _stderr
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
    records: Annotated[
        str | None,
        typer.Option(
            help="Evaluate the edge's published score records instead (a scada-runtime replay --out file, or the "
            "score topic captured, one record per line): event metrics against --labels, score and driver plots."
        ),
    ] = None,
    out: Annotated[
        str | None, typer.Option(help="Report folder (default: <run>/eval_<engine>, or <records>_report).")
    ] = None,
    drift: Annotated[bool, typer.Option("--drift", help="Also compare the test split against validation.")] = False,
    max_lead_hours: Annotated[float, typer.Option(help="An alert up to this long before a fault detects it.")] = 48.0,
    plots: Annotated[bool, typer.Option("--plots/--no-plots")] = True,
    labels: Annotated[
        str | None,
        typer.Option(
            help="Fault events CSV (turbine_id,start,end,fault), e.g. from scada-inject; replaces the prepared labels."
        ),
    ] = None,
    clean: Annotated[
        str | None,
        typer.Option(
            help="With --records and --labels: the records of the uninjected copy of the same data (faults injected "
            "with scada-inject); an onset while its alert is on does not count."
        ),
    ] = None,
    naive_timezone: Annotated[
        str | None,
        typer.Option(
            help="With --records and --labels: the zone of label stamps without a UTC offset (e.g. Europe/Paris), as "
            "data.identifiers.naive_timezone reads them for training; without it such labels are refused."
        ),
    ] = None,
    start: Annotated[str | None, typer.Option(help="With --records: period start, ISO-8601 (default: all).")] = None,
    end: Annotated[str | None, typer.Option(help="With --records: period end, ISO-8601, excluded.")] = None,
    graph: GraphOption = "auto",
) -> None:
    from pathlib import Path

    if records is not None:
        given = [f"--{k}" for k, v in (("checkpoint", checkpoint), ("bundle", bundle), ("data", data)) if v]
        given += ["--drift"] * drift + ["--graph"] * (graph != "auto")
        if given:
            _fail(ValueError(f"--records evaluates the edge's own records: leave out {given}"))
        _evaluate_records(records, labels, clean, out, start, end, max_lead_hours, plots, naive_timezone)
        return
    if start is not None or end is not None or clean is not None:
        _fail(ValueError("--start, --end and --clean apply to --records; a prepared split has its own period"))
    if naive_timezone is not None:
        _fail(ValueError("--naive-timezone applies to --records: a prepared run reads labels in its data's "
                         "data.identifiers.naive_timezone"))  # fmt: skip

    from scada_tcn.trainer.evaluation.evaluate import evaluate
    from scada_tcn.trainer.evaluation.offline import setup_from_args

    try:
        setup, run_dir = setup_from_args(checkpoint, bundle, data, graph)
        setup.log = _stderr
        out_dir = Path(out) if out else run_dir / f"eval_{setup.engine_name}"
        m = evaluate(setup, out_dir, drift=drift, max_lead_hours=max_lead_hours, plots=plots, labels_file=labels)
    except ValueError as e:
        _fail(e)
    keys = ("anomaly", "events", "alerts", "rul")
    print(json.dumps({k: m[k] for k in keys if k in m}, indent=2))
    print(f"reports in {out_dir}", file=sys.stderr)


def _evaluate_records(
    records: str,
    labels: str | None,
    clean: str | None,
    out: str | None,
    start: str | None,
    end: str | None,
    lead_h: float,
    plots: bool,
    naive_timezone: str | None,
) -> None:
    """`scada-evaluate --records`: the report of the edge's records (`edge_records`)."""
    from pathlib import Path

    from scada_tcn.trainer.config.checks import split_bound_ns
    from scada_tcn.trainer.evaluation.edge_records import (
        format_report,
        progress_printer,
        read_fault_labels,
        read_records,
        report,
    )

    try:
        lo, hi = (None if s is None else split_bound_ns(key, s) for key, s in (("--start", start), ("--end", end)))
    except ValueError as e:
        _fail(e)
    if lead_h < 0:
        _fail(ValueError(f"--max-lead-hours must be >= 0, got {lead_h}"))
    if clean is not None and labels is None:
        _fail(ValueError("--clean nets injected faults of their uninjected copy: give their --labels too"))
    if naive_timezone is not None:
        from scada_tcn.runtime.telemetry import zone_problem

        problem = "--naive-timezone reads the --labels file: give it" if labels is None else None
        problem = problem or zone_problem(naive_timezone, "--naive-timezone")
        if problem:
            _fail(ValueError(problem))
    out_dir = Path(out) if out else Path(records).with_name(Path(records).stem + "_report")

    try:
        faults = read_fault_labels(labels, naive_timezone) if labels else None
        recs = read_records(records, progress_printer(records, _stderr))
        copy = read_records(clean, progress_printer(clean, _stderr)) if clean else None
        r = report(recs, out_dir, faults, lo, hi, int(lead_h * 3600 * 10**9), plots, copy)
    except (ValueError, OSError) as e:
        _fail(e)
    print(format_report(r))
    print(f"report in {out_dir}", file=sys.stderr)


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
