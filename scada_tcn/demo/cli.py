"""`scada-demo`: a thin typer wrapper around `scada_tcn.demo.pipeline.run_demo`."""

from __future__ import annotations

import typer

from scada_tcn.extras import COMMANDS

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(help=COMMANDS["scada-demo"].help)
def demo_cmd(
    workdir: str = typer.Option("artifacts/demo", help="Everything the demo writes goes here."),
    seed: int = typer.Option(0, help="Seed of the simulator and of training."),
    broker: bool | None = typer.Option(
        None,
        "--broker/--replay",
        help="Force the broker path or the replay path (default: broker when mosquitto is installed).",
    ),
    turbines: int = typer.Option(6, min=2),
    days: float = typer.Option(120.0, min=100.0, help="Record length; the test period starts on day 80."),
    epochs: int = typer.Option(2, min=1),
    steps_per_epoch: int = typer.Option(120, min=10),
) -> None:
    from scada_tcn.demo.pipeline import DemoIncomplete, DemoSizes, run_demo

    try:
        run_demo(workdir, DemoSizes(turbines, days, epochs, steps_per_epoch), seed, broker)
    except DemoIncomplete as e:
        typer.secho(f"incomplete: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from None
    except (ValueError, RuntimeError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
