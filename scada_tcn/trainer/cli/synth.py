"""`scada-synth`: write a synthetic SCADA export (table, fault labels, README). All logic is in
trainer.sources.simulator."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from scada_tcn.extras import COMMANDS


class Format(StrEnum):
    csv = "csv"
    parquet = "parquet"


HELP = COMMANDS["scada-synth"].help
app = typer.Typer(add_completion=False, help=HELP)


@app.command(help=HELP)
def synth(
    out: Path = typer.Option(..., "--out", help="Output folder (created if missing)."),
    turbines: int = typer.Option(10, "--turbines", min=1, help="Number of turbines (WT01, WT02, ...)."),
    days: float = typer.Option(365.0, "--days", min=0.01, help="Length of the record in days."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of every random draw."),
    fmt: Format = typer.Option(Format.csv, "--format", help="File format of the SCADA table."),
    start: str = typer.Option("2024-01-01", "--start", help="Start of the record, ISO-8601 (UTC if no offset)."),
) -> None:
    def progress(done: int, total: int, turbine_id: str) -> None:
        typer.echo(f"simulated {turbine_id} ({done}/{total})", err=True)

    from scada_tcn.trainer.sources.simulator import write_synthetic

    try:
        paths = write_synthetic(out, turbines, days, seed, start, fmt.value, progress=progress)
    except ValueError as err:  # a bad argument: say which, without a traceback
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    for path in paths.values():
        typer.echo(str(path))
