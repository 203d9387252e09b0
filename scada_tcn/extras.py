"""The console scripts of the trainer side, in an install with or without the `[train]` extra.

One distribution cannot make a console script depend on an extra, so the gateway install (`pip install
scada-tcn`, base dependencies only) carries the trainer's command names too. Their entry points are the
functions here, which import nothing outside the standard library: with the trainer's dependencies installed
they run the command's typer app; without them `--help` prints the command's summary and example and the extra
to install, and any other use exits 2 with the command that installs it, instead of a ModuleNotFoundError.
`COMMANDS` holds each command's summary and example, once: the typer apps show the same text.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import NamedTuple

__all__ = ["COMMANDS", "TRAIN_MODULES", "missing_train_modules"]

TRAIN_MODULES = ("torch", "pandas", "pyarrow", "onnx", "omegaconf", "matplotlib", "typer")
INSTALL = "pip install 'scada-tcn[train]'"


class Command(NamedTuple):
    target: str  # module:attribute of the typer app
    help: str  # summary, blank line, example


COMMANDS = {
    "scada-synth": Command(
        "scada_tcn.trainer.cli.synth:app",
        "Write a synthetic wind-farm SCADA export: OUT/scada.csv (or .parquet), OUT/labels.csv and OUT/README.txt. "
        "One row per turbine and 10-min interval, with labelled faults and the dirt of a real export; the same "
        "seed gives byte-identical files.\n\n"
        "Example: scada-synth --out data/synth --turbines 10 --days 365 --seed 0 --format parquet",
    ),
    "scada-prepare": Command(
        "scada_tcn.trainer.cli.pipeline:prepare_app",
        "Raw SCADA table -> QC, binning, features, masks, scaler, flags, labels and window index.\n\n"
        "Example: scada-prepare data=la_haute_borne data.paths.processed_dir=data/processed/lhb",
    ),
    "scada-train": Command(
        "scada_tcn.trainer.cli.pipeline:train_app",
        "Train the multitask TCN on prepared data; writes <output_dir>/checkpoints/{best,last}.pt.\n\n"
        "Example: scada-train train.epochs=3 device=cpu   (resume: --resume artifacts/demo/checkpoints/last.pt)",
    ),
    "scada-infer": Command(
        "scada_tcn.trainer.cli.pipeline:infer_app",
        "Score every window of a prepared split with the torch (--checkpoint) or ONNX (--bundle) engine; writes "
        "results.parquet and alerts.jsonl.\n\n"
        "Example: scada-infer --bundle artifacts/demo/bundle --data data/processed/synthetic --split test",
    ),
    "scada-evaluate": Command(
        "scada_tcn.trainer.cli.pipeline:evaluate_app",
        "Forecast, fault, anomaly and event-level metrics (val + test), optional drift, RCA examples and plots; "
        "or, with --records, the event metrics and plots of the edge's published score records.\n\n"
        "Example: scada-evaluate --bundle artifacts/demo/bundle --data data/processed/synthetic --drift\n\n"
        "Example: scada-evaluate --records scores.jsonl --labels labels.csv   (scores.jsonl from scada-runtime "
        "replay --out)",
    ),
    "scada-inject": Command(
        "scada_tcn.trainer.cli.pipeline:inject_app",
        "Inject the simulator's labelled faults into one turbine of a real export (default period: the test "
        "range); writes the table in the export's own format (a folder export: a folder `scada` of the same files) "
        "and labels.csv.\n\n"
        "Example: scada-inject data=la_haute_borne --turbine R80736 --out data/lhb_injected --seed 0",
    ),
    "scada-cmapss": Command(
        "scada_tcn.trainer.cli.cmapss:app",
        "NASA C-MAPSS subset -> cmapss.csv (one row per engine and cycle, cycles as 10-min steps, true RUL) and "
        "labels.csv (near_failure where RUL < 30).\n\n"
        "Example: scada-cmapss --subset FD001 --out data/cmapss/fd001 && scada-prepare data=cmapss_fd001",
    ),
    "scada-export": Command(
        "scada_tcn.export.cli:app",
        "Export a scada-train checkpoint to a bundle: clean.onnx, scoring.onnx, step.onnx (when the model streams) "
        "and bundle.json (calibrated on the validation split, torch/onnxruntime parity checked).\n\n"
        "Example: scada-export artifacts/demo/checkpoints/best.pt infer.calibration.percentile=99.9",
    ),
    "scada-demo": Command(
        "scada_tcn.demo.cli:app",
        "The whole system on the built-in simulator: simulate -> prepare -> train (small, CPU) -> export -> the "
        "edge daemon through a local Mosquitto (or replay) over the held-out period -> alerts against the "
        "injected faults.\n\n"
        "Example: scada-demo --workdir artifacts/demo",
    ),
}


def missing_train_modules() -> list[str]:
    """The trainer's dependencies that this environment cannot import."""
    return [m for m in TRAIN_MODULES if importlib.util.find_spec(m) is None]


def _run(name: str) -> None:
    cmd = COMMANDS[name]
    missing = missing_train_modules()
    if not missing:
        module, attr = cmd.target.split(":")
        getattr(importlib.import_module(module), attr)()
        return
    note = f"{name} needs the trainer's dependencies ({', '.join(missing)} not installed): {INSTALL}"
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        print(f"Usage: {name} [OPTIONS] ...\n\n{cmd.help}\n\n{note}")
        sys.exit(0)
    print(note, file=sys.stderr)
    sys.exit(2)


def synth() -> None:
    _run("scada-synth")


def prepare() -> None:
    _run("scada-prepare")


def train() -> None:
    _run("scada-train")


def infer() -> None:
    _run("scada-infer")


def evaluate() -> None:
    _run("scada-evaluate")


def inject() -> None:
    _run("scada-inject")


def cmapss() -> None:
    _run("scada-cmapss")


def export() -> None:
    _run("scada-export")


def demo() -> None:
    _run("scada-demo")
