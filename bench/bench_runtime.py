"""End-to-end throughput and latency of `scada-runtime run` through a real Mosquitto, against a naive baseline.

    python bench/bench_runtime.py --bundle /path/to/bundle [--turbines 100 1000] [--steps 16]

The daemon runs as its own process (the CLI), pinned to core 0; Mosquitto and this driver use the other cores.
Each case gets a Mosquitto of its own (an earlier case's persistent session would make the broker queue the
later cases' telemetry too), and the driver's garbage collector is off while it measures.
Per size, the driver publishes L warm-up steps, then `--steps` measured steps: at each step every turbine sends
one sample, whose arrival closes that turbine's previous bin; the driver waits for every score of the step before
the next one (closed loop). Reported: turbine-steps scored per second, p50/p99 latency from publishing the sample
that closes a bin to receiving its score, resident memory of the daemon, and start-up time from spawn to the
retained status "online" (published right after the subscription), and the daemon's CPU time (all its threads,
user + system) per measured turbine-step: its cost, steadier than the rates on a noisy machine. Two engines of the
same bundle, measured in the same run: `compute.engine: stream` (the step graph: one call per fleet step, layer
state per turbine) against the baseline `compute.engine: window` (the whole L-step window through every scoring pass
at every step). `--score-batch` runs both with `topics.score_batch` (a fleet step's score records as JSON lines,
several per message) instead of one score message per turbine; `--telemetry-batch` sends each step's samples as
one `topics.telemetry_batch` message (JSON lines, every turbine's sample, as a farm gateway would) instead of one
message per turbine, and latency runs from publishing that message; `--telemetry-tag` sends each value on a topic
of its own (`topics.telemetry_tag`, `uns/bench/<turbine>/<key>` with `{"value": ..., "timestamp": ...}`: one message
per channel), latency running from the turbine's first message of the step, which closes its bin. `--state` runs
the daemons with a state file (`state.path` in the case's temporary folder, as deploy/runtime.yaml sets one): every
loop iteration's samples are journaled and fsynced before they are acknowledged, and the snapshot is saved every
`state.save_interval_s`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scada_tcn.runtime.bundle import load_bundle  # noqa: E402
from scada_tcn.runtime.records import split_batch  # noqa: E402
from tests.mosquitto import Broker, client, wait_for  # noqa: E402

DT = 600
T0 = 1_700_000_400  # on the 10-min grid
_SEQ = re.compile(rb'"seq":(\d+)')
_TURBINE = re.compile(rb'"turbine":"([^"]*)"')


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Variant(NamedTuple):
    """How the daemons run: batched score topic, batched telemetry topic, state file, per-tag telemetry topics."""

    score_batch: bool
    telemetry_batch: bool
    state: bool
    telemetry_tag: bool = False


def run_case(bundle_dir: Path, bundle, n: int, steps: int, engine: str, broker: Broker, tmp: Path,
             v: Variant) -> dict:  # fmt: skip
    cfg = {
        "site": "bench",
        "gateway": f"gw{n}-{engine}",
        "log_level": os.environ.get("BENCH_LOG", "WARNING"),
        "broker": {"url": broker.url, "client_id": f"bench-{n}-{engine}-{time.time_ns()}"},
        "ingest": {"grace_s": 1e9, "max_past_s": 1e10, "max_turbines": max(n, 1000)},
        "compute": {"engine": engine, "max_batch": 4096, "tick_s": 0.02},
        "queues": {"receive_maximum": 5000, "inbound": 20000},
        "health": {"metrics_host": "127.0.0.1", "metrics_port": 0},
        "state": {"path": str(tmp / "state.npz") if v.state else None},
        "topics": {
            "score_batch": "scada/{site}/{gateway}/scores" if v.score_batch else None,
            "telemetry_batch": "scada/{site}/{gateway}/telemetry_batch" if v.telemetry_batch else None,
            "telemetry_tag": "uns/{site}/{turbine}/{key}" if v.telemetry_tag else None,
        },
    }
    path = tmp / f"rt-{n}-{engine}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    scores: dict[tuple[str, int], float] = {}
    want: dict[int, int] = {}  # seq -> records still awaited for that step
    step_done = threading.Event()
    lock = threading.Lock()
    online = threading.Event()

    def on_message(c, u, m):
        if m.topic.endswith("/status"):
            if json.loads(m.payload)["state"] == "online":
                online.set()
            return
        now = time.perf_counter()
        if m.topic.endswith("/scores"):  # --score-batch: records one per line
            keys = [
                (_TURBINE.search(r).group(1).decode(), int(_SEQ.search(r).group(1))) for r in split_batch(m.payload)
            ]
        else:  # no full parse: the driver is lean
            keys = [(m.topic.split("/")[2], int(_SEQ.search(m.payload).group(1)))]
        with lock:
            for key in keys:
                if key not in scores:
                    scores[key] = now
                    left = want.get(key[1], 0) - 1
                    want[key[1]] = left
                    if left == 0:
                        step_done.set()

    subscribed = threading.Event()
    col = client(
        broker.url,
        f"col-{n}-{engine}-{time.time_ns()}",
        {
            "on_message": on_message,
            "on_connect": lambda c, u, f, rc, p: c.subscribe(
                [("scada/bench/+/score", 1), ("scada/bench/+/scores", 1), (f"scada/runtime/{cfg['gateway']}/status", 1)]
            ),
            "on_subscribe": lambda c, u, mid, rcs, p: subscribed.set(),
        },
    )
    wait_for(subscribed.is_set, 10, "collector subscription")
    t_spawn = time.perf_counter()
    proc = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            "-m",
            "scada_tcn.runtime.cli",
            "run",
            "--bundle",
            str(bundle_dir),
            "--config",
            str(path),
        ],
        cwd=ROOT,
    )
    try:
        online.wait(60)
        startup = time.perf_counter() - t_spawn
        pub = client(broker.url, f"pub-{n}-{time.time_ns()}")
        wait_for(pub.is_connected, 10, "publisher")
        rng = np.random.default_rng(0)
        spec = bundle.spec
        base = {bundle.column_mapping[c]: float(rng.uniform(1, 10)) for c in spec.channels}  # payload keys
        L = bundle.dims.L
        ids = [f"T{i:04d}" for i in range(n)]
        topics = [f"scada/bench/{t}/telemetry" for t in ids]
        payloads = [  # every message encoded before the clock starts: the driver's cost is not the daemon's
            [
                json.dumps(({"turbine": ids[i]} if v.telemetry_batch else {}) | {"ts": T0 + s * DT, "values": {
                    c: round(v * (1 + 0.01 * e), 4) for (c, v), e in zip(base.items(), rng.standard_normal(len(base)))
                }})
                for i in range(n)
            ]
            for s in range(L + steps + 1)
        ]  # fmt: skip
        batch_topic = f"scada/bench/{cfg['gateway']}/telemetry_batch"
        batched = ["\n".join(step) for step in payloads] if v.telemetry_batch else []
        tagged = [[[(f"uns/bench/{ids[i]}/{k}", json.dumps({"value": x, "timestamp": T0 + s * DT}))
                    for k, x in json.loads(payloads[s][i])["values"].items()] for i in range(n)]
                  for s in range(L + steps + 1)] if v.telemetry_tag else []  # fmt: skip
        sent: dict[tuple[str, int], float] = {}
        lat, t_meas, n_meas, cpu0 = [], 0.0, 0, 0.0
        gc.collect()
        gc.disable()  # the driver's own collector pauses (its heap grows with every case) are not the daemon's
        for s in range(L + steps + 1):
            ts = T0 + s * DT
            seq = ts // DT - 1  # the step each sample closes
            with lock:
                want[seq] = n if s >= 1 else 0
                step_done.clear()
            if s == L + 1:
                cpu0 = _cpu_s(proc.pid)
            t_step = time.perf_counter()
            if v.telemetry_batch:  # one message: every turbine's sample of the step
                pub.publish(batch_topic, batched[s], qos=1)
                now = time.perf_counter()
                sent.update(((t, seq), now) for t in ids)
            elif v.telemetry_tag:  # a message per value; the turbine's first closes its previous bin
                for i in range(n):
                    sent[(ids[i], seq)] = time.perf_counter()
                    for topic, payload in tagged[s][i]:
                        pub.publish(topic, payload, qos=1)
            else:
                for i in range(n):
                    pub.publish(topics[i], payloads[s][i], qos=1)
                    sent[(ids[i], seq)] = time.perf_counter()
            if s >= 1:  # every closed bin gets a record (warm-up ones too); measure the scored steps only
                if not step_done.wait(120):
                    raise AssertionError(f"records of step {s}: {want[seq]} of {n} missing after 120 s")
                if s > L:
                    lat += [scores[(f"T{i:04d}", seq)] - sent[(f"T{i:04d}", seq)] for i in range(n)]
                    t_meas += time.perf_counter() - t_step
                    n_meas += n
        cpu = _cpu_s(proc.pid) - cpu0
        rss = _rss_mb(proc.pid)
        pub.disconnect()
        lat_ms = np.array(lat) * 1e3
        return {
            "turbines": n,
            "engine": engine,
            "turbine_steps_per_s": n_meas / t_meas,
            "cpu_us": 1e6 * cpu / n_meas,
            "p50_ms": float(np.percentile(lat_ms, 50)),
            "p99_ms": float(np.percentile(lat_ms, 99)),
            "rss_mb": rss,
            "startup_s": startup,
        }
    finally:
        gc.enable()
        proc.terminate()
        proc.wait(30)
        col.disconnect()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--turbines", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--window-steps", type=int, default=4, help="measured steps of the (slow) window engine")
    ap.add_argument("--stream-only", action="store_true", help="skip the window baseline (profiling runs)")
    ap.add_argument("--score-batch", action="store_true", help="publish scores with topics.score_batch")
    ap.add_argument("--telemetry-batch", action="store_true", help="send each step's samples on topics.telemetry_batch")
    ap.add_argument("--state", action="store_true", help="run the daemons with a state file (journal + snapshots)")
    ap.add_argument("--telemetry-tag", action="store_true", help="send each value on topics.telemetry_tag")
    args = ap.parse_args()
    if args.telemetry_batch and args.telemetry_tag:
        ap.error("--telemetry-batch and --telemetry-tag are two ways to send the same samples: choose one")
    variant = Variant(args.score_batch, args.telemetry_batch, args.state, args.telemetry_tag)
    bundle = load_bundle(args.bundle)
    with tempfile.TemporaryDirectory() as d:
        print(
            "engines: stream (step graph) against the baseline window (window recompute), same bundle; telemetry "
            + (
                "batched (topics.telemetry_batch)"
                if args.telemetry_batch
                else "one message per value (topics.telemetry_tag)"
                if args.telemetry_tag
                else "one message per turbine"
            )
            + "; scores "
            + ("batched (topics.score_batch)" if args.score_batch else "one message per turbine")
            + ("; with a state file (journal + snapshots)" if args.state else "; no state file")
        )
        print(
            f"{'turbines':>8} {'engine':>8} {'steps/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'RSS MB':>7} {'start s':>7} "
            f"{'CPU us':>7}"
        )
        for n in args.turbines:
            cases = (("stream", args.steps),) + (() if args.stream_only else (("window", args.window_steps),))
            rows = [_fresh_broker_case(args.bundle, bundle, n, k, engine, Path(d) / f"{n}-{engine}", variant)
                    for engine, k in cases]  # fmt: skip
            for r in rows:
                print(
                    f"{n:>8} {r['engine']:>8} {r['turbine_steps_per_s']:>9.0f} {r['p50_ms']:>8.1f} "
                    f"{r['p99_ms']:>8.1f} {r['rss_mb']:>7.0f} {r['startup_s']:>7.2f} {r['cpu_us']:>7.0f}",
                    flush=True,
                )
            if len(rows) == 2:
                speed = rows[0]["turbine_steps_per_s"] / rows[1]["turbine_steps_per_s"]
                lower = rows[1]["p99_ms"] / rows[0]["p99_ms"]
                cpu = rows[1]["cpu_us"] / rows[0]["cpu_us"]
                print(f"{'':>8} {'ratio':>8} {speed:>8.1f}x {lower:>17.1f}x lower p99, {cpu:.1f}x less CPU per "
                      "turbine-step", flush=True)  # fmt: skip


def _fresh_broker_case(bundle_dir: Path, bundle, n: int, steps: int, engine: str, tmp: Path, v: Variant) -> dict:
    """`run_case` on a Mosquitto of its own: an earlier case's daemon leaves a persistent session behind (QoS 1,
    `broker.session_expiry_s`), for which a shared broker would queue every later case's telemetry too."""
    tmp.mkdir(parents=True)
    broker = Broker(tmp / "broker")
    broker.start()
    try:
        return run_case(bundle_dir, bundle, n, steps, engine, broker, tmp, v)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
