"""A farm's backfill through the `scada-runtime replay` command, as an operator runs it: wall time, rate, peak memory.

    python bench/bench_backfill.py --bundle /path/to/bundle [--turbines 50] [--days 365] [--order turbine]

Writes a synthetic raw table (`bench_replay.write_table`: the bundle's training columns, a random walk per
channel, 1 % missing cells) of `--turbines` turbines x `--days` days of steps, turbine by turbine (as per-turbine
exports concatenated; `--order time` sorts it by time first), then runs `scada-runtime replay` on it pinned to one
core. Reported: rows, records, wall seconds, turbine-steps/s, the command's peak RSS, the output's size, and, as
the baseline of the same run, the time `in_time_order` alone takes to parse the table and put it in time order
(what any replay of this table costs before scoring). A year of 50 turbines is 2.6 M rows and ~11 GB of output:
it needs that much free disk next to the table.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_replay import write_table  # noqa: E402
from scada_tcn.runtime.bundle import load_bundle  # noqa: E402
from scada_tcn.runtime.daemon_config import daemon_config_from_dict  # noqa: E402
from scada_tcn.runtime.replay import CHUNK_ROWS, FEED_MIN_ROWS, FEED_STEPS, in_time_order, table_chunks  # noqa: E402


def sort_by_time(table: Path) -> None:
    """Rewrite `table` sorted by its timestamp column (stable), header kept."""
    lines = table.read_bytes().splitlines(keepends=True)
    body = sorted(lines[1:], key=lambda line: int(line.split(b",", 2)[1]))
    table.write_bytes(b"".join([lines[0], *body]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--turbines", type=int, default=50)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--order", choices=("turbine", "time"), default="turbine", help="row order of the table")
    ap.add_argument("--workdir", type=Path, default=None, help="where the table and output go (default: a temp dir)")
    args = ap.parse_args()
    bundle = load_bundle(args.bundle)
    steps = args.days * 86_400 // int(bundle.spec.dt_seconds)
    with tempfile.TemporaryDirectory(dir=args.workdir) as d:
        table, out = Path(d) / "table.csv", Path(d) / "scores.jsonl"
        print(f"writing {args.turbines} turbines x {steps:,} steps ({args.order} order) ...", flush=True)
        rows = write_table(bundle, table, args.turbines, steps)
        if args.order == "time":
            sort_by_time(table)
        cfg = daemon_config_from_dict({})
        t0 = time.perf_counter()
        chunks = table_chunks(table, bundle.spec.channels, cfg.mapping, bundle.table_format, CHUNK_ROWS)
        for _ in in_time_order(((ids, ts, v) for ids, ts, v, _ in chunks), FEED_STEPS, Path(d), FEED_MIN_ROWS):
            pass
        read = time.perf_counter() - t0
        cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0))), sys.executable, "-m", "scada_tcn.runtime.cli",
               "replay", "--bundle", str(args.bundle), "--input", str(table), "--out", str(out)]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
        took = time.perf_counter() - t0
        rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        with out.open("rb") as fh:
            records = sum(1 for _ in fh)
        size = out.stat().st_size
    print(f"rows {rows:,}, records {records:,}: {took:,.1f} s, {records / took:,.0f} turbine-steps/s, peak RSS "
          f"{rss_mb:,.0f} MB, output {size / 1e9:.2f} GB ({size / records:,.0f} bytes per record)")  # fmt: skip
    print(f"baseline, same run: parsing the table and putting it in time order alone {read:,.1f} s "
          f"({rows / read:,.0f} rows/s): the replay spends {read / took:.0%} of its time there")  # fmt: skip


if __name__ == "__main__":
    main()
