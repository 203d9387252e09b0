"""`scada-runtime`: thin typer wrapper over `runtime.daemon.run` and `runtime.replay.replay_file`.

Parses arguments, loads and validates runtime.yaml (with SCADA_RT_* environment overrides) and calls one plain
function; no logic lives here. Configuration errors, and a bundle or table that `replay` refuses, exit with code 2
and the message.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from scada_tcn.runtime.config import ConfigError, describe, load_config

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Edge runtime of scada-tcn: score SCADA telemetry from MQTT (run) or from a table (replay).\n\n"
    "Example: scada-runtime run --bundle /opt/scada-runtime/bundle --config /etc/scada-runtime/runtime.yaml",
)

_RUN_HELP = """Serve a bundle: telemetry from MQTT in, scores, alerts and status out.

Example:

  scada-runtime run --bundle /opt/scada/bundle --config /etc/scada-runtime/runtime.yaml

  SCADA_RT_BROKER__URL=mqtts://broker:8883 SCADA_RT_BROKER__PASSWORD=... scada-runtime run --bundle b/

Every key of runtime.yaml can be set as SCADA_RT_<SECTION>__<KEY>; unknown keys are refused.
Use `scada-runtime config-keys` to list them. SIGTERM drains and exits cleanly.
"""

_REPLAY_HELP = """Score a raw SCADA table (CSV) with the daemon's pipeline; one JSON line per step.

Example:

  scada-runtime replay --bundle bundle/ --input data/synth/scada.csv --out scores.jsonl

A table in the training format needs no mapping; otherwise give --config with a `mapping` section.
"""


def _config(path: Path | None):
    try:
        return load_config(path, os.environ)
    except ConfigError as e:
        typer.echo(f"config error: {e}", err=True)
        raise typer.Exit(2) from None


@app.command(help=_RUN_HELP)
def run(
    bundle: Path = typer.Option(..., "--bundle", help="bundle directory written by scada-export"),
    config: Path | None = typer.Option(None, "--config", help="runtime.yaml (default: built-in defaults)"),
) -> None:
    from scada_tcn.runtime.daemon import run as run_daemon

    raise typer.Exit(run_daemon(_config(config), str(bundle)))


@app.command(help=_REPLAY_HELP)
def replay(
    bundle: Path = typer.Option(..., "--bundle", help="bundle directory written by scada-export"),
    input: Path = typer.Option(..., "--input", help="raw SCADA table, .csv"),  # noqa: A002
    out: Path = typer.Option(..., "--out", help="score records, JSON lines"),
    config: Path | None = typer.Option(None, "--config", help="runtime.yaml for `mapping` and compute"),
    alerts: Path | None = typer.Option(None, "--alerts", help="also write alert transitions here"),
) -> None:
    from scada_tcn.runtime.errors import BundleError, InputError, SpecError
    from scada_tcn.runtime.replay import replay_file

    cfg = _config(config)
    try:
        summary = replay_file(bundle, input, out, cfg, alerts)
    except (BundleError, InputError, SpecError) as e:  # a bad bundle or table: the message says what to fix
        typer.echo(f"replay: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(summary), err=True)


@app.command("config-keys", help="List every runtime.yaml key with its default and description.")
def config_keys() -> None:
    typer.echo(describe())


if __name__ == "__main__":
    sys.exit(app())
