"""The daemon as an operator runs it, in a process of its own against a real Mosquitto: a backlog of 100k QoS 1
messages queued while it was away, and SIGKILL at several points of a stream.

What must hold: the broker never drops the daemon for a missed keepalive while it works through the backlog;
every closed step is scored exactly once (distinct `seq` per turbine = the closed steps sent) with resident memory
bounded; after each SIGKILL and restart (state file + journal), every step's record is byte-identical to the
uninterrupted pipeline's (`scada-runtime replay` over the same table), and no step is ever published with two
different payloads.
"""

from __future__ import annotations

import json
import random
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from scada_tcn.runtime.bundle import load_bundle
from scada_tcn.runtime.records import dedupe
from scada_tcn.runtime.replay import replay_file
from tests.mosquitto import (
    SITE,
    Collector,
    DaemonProcess,
    client,
    daemon_config_dict,
    double_levels,
    expected_steps,
    publish_all,
    reexported,
    to_messages,
    wait_for,
    write_csv,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kind(request) -> str:
    """The engine under test: "stream" (the per-signal bundle's step graph, the default engine) unless a test is
    parametrized with `ENGINES`, which adds "window" (the tiny window-mean bundle, window recompute)."""
    return getattr(request, "param", "stream")


ENGINES = pytest.mark.parametrize("kind", ["stream", "window"], indirect=True)


@pytest.fixture(scope="module")
def bundle_dir(kind, tiny_bundle, request) -> Path:
    return request.getfixturevalue("signal_run")[0] if kind == "stream" else tiny_bundle


def _fleet_rows(tiny_run, copies: int, steps: int | None = None) -> tuple[list[str], list[list[str]]]:
    """The tiny farm's raw rows, each turbine copied `copies` times under new ids, in time order."""
    import csv

    with open(tiny_run.synth_dir / "scada.csv", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    ti, ii = header.index("timestamp"), header.index("turbine_id")
    if steps is not None:
        stamps = sorted({r[ti] for r in rows})[:steps]
        keep = set(stamps)
        rows = [r for r in rows if r[ti] in keep]
    out = [[*r[:ii], f"{r[ii]}c{k}", *r[ii + 1 :]] for k in range(copies) for r in rows]
    out.sort(key=lambda r: r[ti])  # ISO stamps of one offset sort as text
    return header, out


def _base_cfg(broker, tmp_path: Path, **sections) -> dict:
    return daemon_config_dict(
        broker.url,
        broker={"keepalive_s": 10},  # a starved network thread shows within 15 s (loop passes took 30-45 s)
        health={"metrics_port": 0},
        **sections,
    )


def _crash_run(broker, bundle_dir: Path, tmp_path: Path, name: str) -> tuple[DaemonProcess, Collector, Any]:
    """A daemon with a state file (snapshots every second: a kill lands after frames no snapshot holds yet unless the
    daemon sat idle that long; every 0.3 s, a kill that the collector's lag put after the chunk's end found nothing
    to replay), started once so that its session exists before the stream starts (the broker keeps telemetry for
    sessions only); a score collector and a telemetry publisher. Returns (daemon, collector, publisher)."""
    cfg = _base_cfg(broker, tmp_path, state={"path": str(tmp_path / "state" / "state.npz"), "save_interval_s": 1.0},
                    compute={"tick_s": 0.05, "max_batch": 8}, log_level="INFO")  # fmt: skip
    daemon = DaemonProcess(bundle_dir, cfg, tmp_path / "d")
    col = Collector(broker.url, [f"scada/{SITE}/+/score"], client_id=f"{name}-collector")
    wait_for(col.ready, 10, "collector")
    pub = client(broker.url, f"{name}-publisher")
    wait_for(pub.is_connected, 10, "publisher")
    status = Collector(broker.url, ["scada/runtime/+/status"], client_id=f"{name}-status")
    wait_for(status.ready, 10, "status collector")
    daemon.start()
    wait_for(lambda: any(b'"online"' in p for _, p in status.of("/status")), 60, "daemon online")
    time.sleep(1.0)  # its SUBACK
    status.close()
    return daemon, col, pub


def _subscribed(daemon: DaemonProcess) -> None:
    """Wait for the (re)started daemon's telemetry subscriber to connect."""
    wait_for(lambda: daemon.log.read_text().count('"client": "sub", "session_present"') >= daemon.starts, 60,
             "the restarted daemon's telemetry subscriber to connect")  # fmt: skip


def _every_step_once(daemon: DaemonProcess, col: Collector, want: dict[str, int], what: str) -> Any:
    """Wait for every closed step's score, stop the daemon, and check that each step came once, with one payload;
    returns the collected records (`dedupe`)."""

    def done() -> bool:
        assert daemon.alive(), daemon.log.read_text()[-3000:]
        return col.has_steps(sum(want.values()))

    wait_for(done, 240, what)
    assert daemon.stop() == 0
    got = dedupe(p for _, p in col.of("/score"))
    assert got.conflicts == {}, f"{len(got.conflicts)} steps were published with two different payloads"
    assert {t: len(got.seqs().get(t, ())) for t in want} == want
    return got


def test_backlog_of_100k_messages_is_scored_once_without_a_keepalive_disconnect(broker, bundle_dir, tiny_run,
                                                                                 tmp_path):  # fmt: skip
    header, rows = _fleet_rows(tiny_run, copies=4)
    assert len(rows) >= 100_000
    want = expected_steps(rows, header)
    cfg = _base_cfg(broker, tmp_path, queues={"receive_maximum": 1000, "inbound": 5000}, log_level="INFO")
    daemon = DaemonProcess(bundle_dir, cfg, tmp_path / "d")
    col = Collector(broker.url, [f"scada/{SITE}/+/score"], client_id="backlog-collector")
    wait_for(col.ready, 10, "collector")
    status = Collector(broker.url, ["scada/runtime/+/status"], client_id="backlog-status")
    wait_for(status.ready, 10, "status collector")
    daemon.start()  # once, to create its persistent session and subscription
    wait_for(lambda: any(b'"online"' in p for _, p in status.of("/status")), 60, "daemon online")
    time.sleep(1.0)  # its SUBACK
    assert daemon.stop() == 0
    status.close()
    pub = client(broker.url, "backlog-publisher", inflight=1000)
    wait_for(pub.is_connected, 10, "publisher")
    t0 = time.monotonic()
    publish_all(pub, to_messages(header, rows))
    queued_s = time.monotonic() - t0
    daemon.start()
    rss: list[float] = []
    t1 = time.monotonic()

    def done() -> bool:
        assert daemon.alive(), daemon.log.read_text()[-3000:]
        rss.append(daemon.rss_mb())
        return col.has_steps(sum(want.values()))

    wait_for(done, 420, "every closed step scored")
    took = time.monotonic() - t1
    port = re.findall(r'"health_port": (\d+)', daemon.log.read_text())[-1]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    peak = float(re.search(r"^scada_runtime_inbound_queue_peak (\S+)$", metrics, re.M).group(1))
    connects = float(re.search(r"^scada_runtime_connects (\S+)$", metrics, re.M).group(1))
    assert daemon.stop() == 0
    d = dedupe(p for _, p in col.of("/score"))
    assert d.conflicts == {}
    seqs = d.seqs()
    assert {t: len(seqs.get(t, ())) for t in want} == want  # every closed step once, nothing else
    log = broker.log.read_text()
    assert "exceeded timeout" not in log, log[-2000:]
    assert max(rss) < 400, f"daemon RSS {max(rss):.0f} MB"
    why = [ln for ln in daemon.log.read_text().splitlines() if "disconnected" in ln or "loop error" in ln]
    assert peak <= 5000 + 1000 and connects == 2, (peak, connects, why[-5:])  # paused reads; no reconnect
    print(
        f"\nbacklog: {len(rows):,} messages queued in {queued_s:.1f} s; scored {sum(want.values()):,} steps in "
        f"{took:.1f} s ({sum(want.values()) / took:,.0f} steps/s); {d.duplicates} duplicates; "
        f"peak RSS {max(rss):.0f} MB; inbound queue peak {peak:.0f}; no reconnect, no keepalive disconnect"
    )
    pub.disconnect()
    col.close()


@ENGINES
def test_sigkill_at_several_points_changes_no_score(broker, bundle_dir, tiny_run, tmp_path):
    header, rows = _fleet_rows(tiny_run, copies=3, steps=600)
    table = write_csv(tmp_path / "stream.csv", header, rows)
    reference = tmp_path / "replay.jsonl"
    replay_file(bundle_dir, table, reference)
    ref = dedupe(reference.read_bytes().splitlines())
    assert ref.conflicts == {} and len(ref.records) > 3000
    daemon, col, pub = _crash_run(broker, bundle_dir, tmp_path, "crash")
    messages = to_messages(header, rows)
    rng = random.Random(0)
    chunks = [messages[i : i + len(messages) // 5 + 1] for i in range(0, len(messages), len(messages) // 5 + 1)]
    kills = 0
    for k, chunk in enumerate(chunks):
        _subscribed(daemon)
        scored = col.steps()
        publish_all(pub, chunk, wait=k == len(chunks) - 1)
        if k < len(chunks) - 1:  # somewhere in the middle of scoring that chunk (paho sends the rest after it)
            part = scored + int(len(chunk) * rng.uniform(0.2, 0.8))
            wait_for(lambda n=part: col.has_steps(n), 60, "the scores of part of the chunk")
            daemon.kill()
            kills += 1
            daemon.start()
    got = _every_step_once(daemon, col, expected_steps(rows, header), "every closed step scored after the restarts")
    differ = [k for k, p in got.records.items() if ref.records.get(k) != p]
    assert differ == [], f"{len(differ)} steps differ from the uninterrupted run, e.g. {differ[:3]}"
    log = daemon.log.read_text()
    replayed = [int(x) for x in re.findall(r'"journal_frames": (\d+)', log)]
    assert kills == 4 and len(replayed) == daemon.starts == 5
    assert sum(n > 0 for n in replayed[1:]) >= 2, f"the kills should land mid-stream (frames replayed: {replayed})"
    print(
        f"\nSIGKILL x{kills}: {len(got.records):,} steps, all identical to replay; {got.duplicates} duplicates; "
        f"journal frames replayed at each start {replayed}"
    )
    pub.disconnect()
    col.close()


def test_sigkill_then_a_reexport_loses_no_step_the_old_bundle_closed(broker, bundle_dir, tiny_run, tmp_path):
    """SIGKILL mid-stream, then a start on a re-export of the model (other levels: another bundle). The steps the
    journal closes were the old bundle's; they were not published again, so those whose records had not reached
    the broker before the kill were never published (65 steps of each of the 12 turbines in one run, 780
    records). The daemon now scores them again with the copy of the old
    bundle it keeps beside the state file: every closed step gets a record, none two different ones, and every
    record of the old bundle is the uninterrupted old bundle's (`scada-runtime replay`), byte for byte."""
    header, rows = _fleet_rows(tiny_run, copies=3, steps=600)
    table = write_csv(tmp_path / "stream.csv", header, rows)
    reference = tmp_path / "replay.jsonl"
    replay_file(bundle_dir, table, reference)
    ref = dedupe(reference.read_bytes().splitlines())
    old_id = load_bundle(bundle_dir).bundle_id
    other = reexported(load_bundle(bundle_dir), tmp_path / "reexport", double_levels)
    daemon, col, pub = _crash_run(broker, bundle_dir, tmp_path, "reexport")
    messages = to_messages(header, rows)
    half = len(messages) // 2
    publish_all(pub, messages[:half])
    wait_for(lambda: col.has_steps(int(half * 0.5)), 60, "the scores of half of the first part")
    daemon.kill()
    daemon.bundle_dir = other.path
    daemon.start()
    _subscribed(daemon)
    publish_all(pub, messages[half:], wait=True)
    got = _every_step_once(daemon, col, expected_steps(rows, header), "every closed step scored after the restart")
    by_bundle = {
        b: [k for k, p in got.records.items() if json.loads(p)["bundle_id"] == b] for b in (old_id, other.bundle_id)
    }
    assert len(by_bundle[old_id]) + len(by_bundle[other.bundle_id]) == len(got.records)
    assert by_bundle[other.bundle_id] and [k for k in by_bundle[old_id] if ref.records[k] != got.records[k]] == []
    log = daemon.log.read_text()
    assert "scored again by the engine that wrote the state" in log and "not published again" not in log
    assert [p.name for p in (tmp_path / "state" / "state.npz.bundles").iterdir()] == [other.bundle_id]
    replayed = [int(x) for x in re.findall(r'"journal_frames": (\d+)', log)]
    print(f"\nSIGKILL then a re-export: {len(got.records):,} steps ({len(by_bundle[old_id]):,} of the old bundle, "
          f"all identical to its replay); {got.duplicates} duplicates; journal frames replayed {replayed}")  # fmt: skip
    pub.disconnect()
    col.close()


@ENGINES
def test_replay_and_daemon_records_do_not_depend_on_the_batch(bundle_dir, tiny_run, tmp_path):
    """The same table replayed with graph batches of 1 and of 256: the same bytes (the graphs are batch-invariant)."""
    from scada_tcn.runtime.daemon_config import daemon_config_from_dict

    header, rows = _fleet_rows(tiny_run, copies=2, steps=300)
    table = write_csv(tmp_path / "t.csv", header, rows)
    outs = []
    for batch in (1, 256):
        out = tmp_path / f"b{batch}.jsonl"
        replay_file(bundle_dir, table, out, daemon_config_from_dict({"compute": {"max_batch": batch}}))
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and outs[0].count(b'"status":"ok"') > 500
    load_bundle(bundle_dir)  # the bundle is untouched
