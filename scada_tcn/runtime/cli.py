"""`scada-runtime`: a thin argparse wrapper over `runtime.daemon.run`, `runtime.replay.replay_file` and
`runtime.message_check`.

Parses arguments, loads and validates runtime.yaml (with SCADA_RT_* environment overrides) and calls one plain
function; no logic lives here. argparse (the standard library) keeps the gateway install to the runtime's own
dependencies. Configuration errors, and a bundle or table that `replay` refuses, exit with code 2 and the message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from scada_tcn.runtime.daemon_config import ConfigError, RuntimeConfig, describe, load_daemon_config

__all__ = ["main", "parser"]

_HELP = """Edge runtime of scada-tcn: score SCADA telemetry from MQTT (run) or from a table (replay).

Example: scada-runtime run --bundle /opt/scada-runtime/bundle --config /etc/scada-runtime/runtime.yaml
"""

_RUN_HELP = """Serve a bundle: telemetry from MQTT in, scores, alerts and status out.

Example:

  scada-runtime run --bundle /opt/scada/bundle --config /etc/scada-runtime/runtime.yaml

  SCADA_RT_BROKER__URL=mqtts://broker:8883 SCADA_RT_BROKER__PASSWORD=... scada-runtime run --bundle b/

Every key of runtime.yaml can be set as SCADA_RT_<SECTION>__<KEY>; unknown keys are refused.
Use `scada-runtime config-keys` to list them. SIGTERM drains and exits cleanly.
"""

_REPLAY_HELP = """Score a raw SCADA table (CSV, plain or .gz) with the daemon's pipeline; one JSON line per step.

Example:

  scada-runtime replay --bundle bundle/ --input data/synth/scada.csv --out scores.jsonl

A table in the training format (its columns, id and time columns, time format, zone, CSV separator and decimal
mark: the bundle records them) needs no mapping; otherwise give --config with a `mapping` section. Rows may
come in any order (by time, by turbine, per-turbine exports concatenated): they are scored in time order, as
offline. The parsed table waits in a temporary file next to --out (8 bytes per channel and row) until then.
"""


_DECODE_HELP = """Show what the daemon reads in one telemetry message, without a broker: which setting's decoder
takes its topic, each sample (turbine, stamp, channel -> value; null where the source says it has no value) and
each refusal with its reason. Use it to check runtime.yaml's mapping against messages captured from a gateway.

Example:

  scada-runtime decode --bundle bundle/ --config runtime.yaml --topic scada/farm1/WT01/telemetry \\
      --payload '{"ts": "2024-01-28T00:10:00Z", "values": {"wind_speed": 7.9}}' --now 2024-01-28T00:10:30Z

  mosquitto_sub -t 'uns/farm1/WT01/scada/#' -C 1 > msg.json; scada-runtime decode --bundle bundle/ \\
      --config runtime.yaml --topic uns/farm1/WT01/scada/Nacelle/WindSpeed --file msg.json

  mosquitto_sub -t 'scada/#' -F %j -W 600 > capture.jsonl; scada-runtime decode --bundle bundle/ \\
      --config runtime.yaml --capture capture.jsonl

Prints one JSON object; exits 0 when nothing was refused, 1 when something was. With --capture (what
`mosquitto_sub -F %j` prints: a JSON object per message with its topic and payload) every message goes through,
in order, and the summary gives the samples, the turbines, the values each channel got, the channels that got
none, the refusals by reason and the first messages refused, explained. The stamps are checked against --now,
else a captured message's `tst` (when mosquitto_sub received it), else the clock, as the daemon checks them
against its own. A Sparkplug data message names its metrics by aliases that the births give; alone, it is
refused (no_birth). Capture Sparkplug (binary) with its payload in hex, births included:
mosquitto_sub -t 'spBv1.0/<group>/#' -F '{"tst":"%I","topic":"%t","hex":"%x"}' > capture.jsonl
"""


def parser() -> argparse.ArgumentParser:
    """The command line of scada-runtime."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="scada-runtime", description=_HELP, formatter_class=fmt)
    sub = p.add_subparsers(dest="command", metavar="{run,replay,config-keys,decode}")
    run = sub.add_parser("run", help="serve a bundle over MQTT", description=_RUN_HELP, formatter_class=fmt)
    run.add_argument("--bundle", type=Path, required=True, help="bundle directory written by scada-export")
    run.add_argument("--config", type=Path, default=None, help="runtime.yaml (default: built-in defaults)")
    rep = sub.add_parser("replay", help="score a table as the daemon would", description=_REPLAY_HELP,
                         formatter_class=fmt)  # fmt: skip
    rep.add_argument("--bundle", type=Path, required=True, help="bundle directory written by scada-export")
    rep.add_argument(
        "--input", type=Path, required=True, help="raw SCADA table: a .csv or .csv.gz file, or a folder of them"
    )
    rep.add_argument("--out", type=Path, required=True, help="score records, JSON lines")
    rep.add_argument("--config", type=Path, default=None, help="runtime.yaml for `mapping` and compute")
    rep.add_argument("--alerts", type=Path, default=None, help="also write alert transitions here")
    sub.add_parser("config-keys", help="list every runtime.yaml key with its default and description")
    dec = sub.add_parser("decode", help="show what the daemon reads in one message", description=_DECODE_HELP,
                         formatter_class=fmt)  # fmt: skip
    dec.add_argument("--bundle", type=Path, required=True, help="bundle directory written by scada-export")
    dec.add_argument("--config", type=Path, default=None, help="runtime.yaml (default: built-in defaults)")
    dec.add_argument("--topic", help="the message's MQTT topic (with --payload or --file)")
    given = dec.add_mutually_exclusive_group(required=True)
    given.add_argument("--payload", help="the payload as text")
    given.add_argument("--file", type=Path, help="a file holding the payload, bytes as sent (Sparkplug's too)")
    given.add_argument("--capture", type=Path, help="messages as `mosquitto_sub -F %%j` prints them, one a line")
    dec.add_argument("--now", default=None, help="the clock the stamps are checked against, ISO-8601 (default: now)")
    return p


def _config(path: Path | None) -> RuntimeConfig:
    try:
        return load_daemon_config(path, os.environ)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run scada-runtime with `argv` (default: the process arguments); returns the exit code."""
    p = parser()
    args = p.parse_args(argv)
    if args.command is None:
        p.print_help()
        return 2
    if args.command == "config-keys":
        print(describe())
        return 0
    cfg = _config(args.config)
    if args.command == "decode":
        return _decode(cfg, args)
    if args.command == "run":
        from scada_tcn.runtime.daemon import run as run_daemon

        try:
            return run_daemon(cfg, str(args.bundle))
        except ConfigError as e:  # a setting that only the bundle shows wrong (a mapped key also ignored)
            print(f"config error: {e}", file=sys.stderr)
            return 2
    from scada_tcn.runtime.errors import BundleError, InputError, SpecError
    from scada_tcn.runtime.repeated_hour import left_out_said
    from scada_tcn.runtime.replay import replay_file

    t0 = time.monotonic()

    def progress(c: dict) -> None:
        if not c["rows"]:  # still parsing the table (it is fed in time order once read whole)
            if not c["read"]:
                print(f"replay: reading {c['read_as']}", file=sys.stderr, flush=True)
                return
            print(f"replay: read {c['read']:,} rows", file=sys.stderr, flush=True)
            return
        rate = c["rows"] / max(time.monotonic() - t0, 1e-9)
        print(f"replay: scored {c['rows']:,} of {c['read']:,} rows, {c['turbines']} turbines, "
              f"{c['scores'] + c['warmup']:,} records ({rate:,.0f} rows/s)", file=sys.stderr, flush=True)  # fmt: skip

    try:
        summary = replay_file(args.bundle, args.input, args.out, cfg, args.alerts, progress)
    except (BundleError, ConfigError, InputError, SpecError) as e:  # a bad bundle, setting or table: what to fix
        print(f"replay: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary), file=sys.stderr)
    if summary["repeated_hour_dropped"]:
        print(f"replay: {summary['repeated_hour_dropped']:,} rows left out "
              + left_out_said(summary["repeated_hour_examples"]), file=sys.stderr)  # fmt: skip
    if summary["held_steps"]:
        held = ", ".join(f"{c} {k:,}" for c, k in summary["held_steps"].items())
        print(f"replay: steps given a report-by-exception channel's last value (hold_s): {held}", file=sys.stderr)
    return 0


def _decode(cfg: RuntimeConfig, args: argparse.Namespace) -> int:
    """`scada-runtime decode`: print what the daemon reads in the message, or in a capture's; 0 when nothing was
    refused, 2 for bad arguments."""
    from scada_tcn.runtime.bundle import load_bundle
    from scada_tcn.runtime.errors import BundleError
    from scada_tcn.runtime.ingress import Ingress
    from scada_tcn.runtime.message_check import captured, explain, survey
    from scada_tcn.runtime.telemetry import parse_timestamp_ns

    now = time.time_ns() if args.now is None else parse_timestamp_ns(args.now)
    if isinstance(now, str):
        print(f"decode: --now {args.now!r} ({now}): an ISO-8601 time with a UTC offset, e.g. 2024-01-28T00:10:30Z",
              file=sys.stderr)  # fmt: skip
        return 2
    if (args.topic is None) != (args.capture is not None):
        print("decode: give --topic with --payload or --file, or --capture alone", file=sys.stderr)
        return 2
    try:
        ingress = Ingress(cfg, load_bundle(args.bundle))
        if args.capture is not None:
            got = survey(ingress, captured(args.capture, now if args.now is not None else None))
        else:
            payload = args.payload.encode() if args.payload is not None else args.file.read_bytes()
            got = explain(ingress, args.topic, payload, now)
    except (BundleError, ConfigError, ValueError) as e:
        print(f"decode: {e}", file=sys.stderr)
        return 2
    print(json.dumps(got, indent=1))
    return 1 if got["refused"] else 0


if __name__ == "__main__":
    sys.exit(main())
