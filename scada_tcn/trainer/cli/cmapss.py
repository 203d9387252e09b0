"""`scada-cmapss`: convert one NASA C-MAPSS subset into a raw table for `scada-prepare` (see
trainer/sources/cmapss.py)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from scada_tcn.extras import COMMANDS

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(help=COMMANDS["scada-cmapss"].help)
def cmapss_cmd(
    out: Annotated[str, typer.Option(help="Output folder, e.g. data/cmapss/fd001 (what configs/data/cmapss_* read).")],
    subset: Annotated[str, typer.Option(help="FD001 | FD002 | FD003 | FD004")] = "FD001",
    src: Annotated[str, typer.Option(help="Folder of the NASA files.")] = "../shared/data/nasa_cmapss",
) -> None:
    from scada_tcn.trainer.sources.cmapss import write_cmapss

    try:
        summary = write_cmapss(src, subset.upper(), out)
    except ValueError as e:  # InputError
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    print(json.dumps(summary, indent=2))
