"""`scada-export`: a thin typer wrapper around `export.bundle_writer.export_bundle`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from scada_tcn.export.tolerances import DEFAULT_ATOL, DEFAULT_RTOL
from scada_tcn.extras import COMMANDS

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(help=COMMANDS["scada-export"].help)
def export_cmd(
    checkpoint: Annotated[str, typer.Argument(help="best.pt or last.pt written by scada-train.", show_default=False)],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="infer.* overrides of the checkpoint's config (infer.calibration.per_regime=true).", show_default=False
        ),
    ] = None,
    out: Annotated[str | None, typer.Option(help="Bundle directory.", show_default="<run output dir>/bundle")] = None,
    data: Annotated[
        str | None,
        typer.Option(help="Prepared data folder.", show_default="data.paths.processed_dir of the checkpoint's config"),
    ] = None,
    verify: Annotated[bool, typer.Option(help="Check torch/onnxruntime parity; fail beyond the tolerance.")] = True,
    atol: Annotated[float, typer.Option(help="Absolute parity tolerance.")] = DEFAULT_ATOL,
    rtol: Annotated[float, typer.Option(help="Relative parity tolerance.")] = DEFAULT_RTOL,
) -> None:
    from scada_tcn.export.bundle_writer import export_bundle

    try:
        bundle = export_bundle(
            checkpoint,
            out_dir=out,
            data_dir=data,
            overrides=overrides or [],
            verify=verify,
            atol=atol,
            rtol=rtol,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    except (ValueError, OSError) as e:  # ConfigError, SpecError, ExportError, BundleError all subclass ValueError
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    print(f"bundle {bundle.path}\nmodel id {bundle.model_id}\nbundle id {bundle.bundle_id}")
    cal, sig = bundle.calibration, bundle.signals
    if sig is not None:  # per-signal scoring: a level per monitor instead of one calibrated threshold
        lv = sig.levels
        print(
            f"levels p{lv.percentile:g}: {len(lv.pooled)} monitors on {lv.n_steps} validation steps, "
            f"{len(lv.per_turbine)} turbines with their own levels; "
            f"{'streams (step.onnx)' if bundle.stream is not None else 'window graphs only'}"
        )
        fallbacks = lv.fallbacks
    else:
        how = f"p{cal.percentile:g}" if cal.method == "percentile" else "EVT (peaks over threshold)"
        print(
            f"threshold {how}: global {cal.global_threshold:.4g} on {cal.n_windows} windows, "
            f"{len(cal.per_turbine)} per turbine, {len(cal.per_turbine_regime) + len(cal.per_regime)} per regime"
        )
        fallbacks = cal.fallbacks
    for key, why in fallbacks.items():
        print(f"  fallback {key}: {why}")
    if bundle.parity is None:
        print("parity: not checked (--no-verify)")
    else:
        worst = {k: f"{v['max_abs']:.2g}" for k, v in bundle.parity.outputs.items()}
        print(f"parity within atol={bundle.parity.atol:g}, rtol={bundle.parity.rtol:g}; max abs diff {worst}")
