"""A real Mosquitto broker for the runtime tests, and the helpers that talk to it (nothing is mocked).

`Broker`: free loopback port, `log_dest stderr`, persistence in a tmp dir, stopped by pid (never by name),
optional password file and TLS listener:

    broker = Broker(tmp_path, users={"gw": "secret"})
    broker.start(); ...; broker.stop(); broker.start()   # a restart keeps the persisted sessions

Helpers: raw timeline slices of the simulator's CSV, their telemetry messages, a QoS 1 publisher and collector
(persistent sessions), a daemon on a thread (`stop()` is the SIGTERM path), `wait_for`, and `reexported` (a
bundle's files with other settings).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from scada_tcn.demo.broker import MosquittoProcess, closed_steps, find_mosquitto, telemetry_messages
from scada_tcn.runtime.binning import bin_end_ns
from scada_tcn.runtime.bundle import load_bundle
from scada_tcn.runtime.daemon import Daemon
from scada_tcn.runtime.daemon_config import daemon_config_from_dict
from scada_tcn.runtime.records import dedupe
from scada_tcn.runtime.telemetry import Sample, parse_timestamp_ns

MOSQUITTO = find_mosquitto()


def require_mosquitto() -> str:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does it)")
    return MOSQUITTO


class Broker(MosquittoProcess):
    """`demo.broker.MosquittoProcess` that skips the test when mosquitto or mosquitto_passwd is missing."""

    def __init__(
        self,
        workdir: Path,
        users: dict[str, str] | None = None,
        tls: dict[str, Path] | None = None,
        inflight: int = 0,
        max_packet: int = 0,
    ):
        if users and shutil.which("mosquitto_passwd") is None:
            pytest.skip("mosquitto_passwd is not installed (it comes with the mosquitto package)")
        super().__init__(require_mosquitto(), workdir, users, tls, inflight, max_packet)


DT_NS = 600 * 10**9
SITE = "farm"
GATEWAY = "gw1"


def read_slice(csv_path: Path, start_iso: str, end_iso: str) -> tuple[list[str], list[list[str]]]:
    """Header and the raw rows whose bin label lies in [start, end], sorted by time (stable: file order kept)."""
    lo, hi = parse_timestamp_ns(start_iso), parse_timestamp_ns(end_iso)
    with open(csv_path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        every = list(reader)
    ti = header.index("timestamp")
    rows = [r for r, label in zip(every, bin_labels(header, every)) if lo <= label <= hi]
    rows.sort(key=lambda r: parse_timestamp_ns(r[ti]))
    return header, rows


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def to_messages(header: list[str], rows: list[list[str]]) -> list[tuple[str, bytes]]:
    """(topic, payload) per raw row of this test site (`demo.broker.telemetry_messages`)."""
    return telemetry_messages(header, rows, SITE)


def to_batches(header: list[str], rows: list[list[str]], topic: str, per_message: int) -> list[tuple[str, bytes]]:
    """The raw rows as `topics.telemetry_batch` messages on `topic`: JSON lines, `per_message` rows per message in
    row order, each line the per-turbine payload with its turbine id added."""
    ii = header.index("turbine_id")
    docs = [json.loads(p) for _, p in to_messages(header, rows)]
    lines = [json.dumps({"turbine": r[ii], **doc}).encode() for r, doc in zip(rows, docs)]
    return [(topic, b"\n".join(lines[i : i + per_message])) for i in range(0, len(lines), per_message)]


def to_samples(header: list[str], rows: list[list[str]], channels: Sequence[str]) -> list[Sample]:
    """The raw rows as the engine's samples (cells that are not numbers become NaN), in row order."""
    ti, ii = header.index("timestamp"), header.index("turbine_id")
    cols = [header.index(c) for c in channels]

    def num(cell: str) -> float:
        try:
            return float(cell)
        except ValueError:
            return float("nan")

    return [Sample(r[ii], parse_timestamp_ns(r[ti]), np.array([num(r[j]) for j in cols])) for r in rows]


def expected_steps(rows: list[list[str]], header: list[str]) -> dict[str, int]:
    """Per turbine: closed steps once all rows are in (`demo.broker.closed_steps`)."""
    return closed_steps(header, rows, DT_NS // 10**9)


def bin_labels(header: list[str], rows: list[list[str]]) -> list[int]:
    """The bin (end, ns) of each raw row."""
    ti = header.index("timestamp")
    return bin_end_ns(np.array([parse_timestamp_ns(r[ti]) for r in rows], dtype=np.int64), DT_NS // 10**9).tolist()


def client(
    url: str, client_id: str, callbacks: dict[str, Any] | None = None, inflight: int = 200, **auth: Any
) -> paho.Client:
    """A started paho v5 client (persistent session); `callbacks` are set before connecting."""
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    for name, cb in (callbacks or {}).items():
        setattr(c, name, cb)
    c.max_inflight_messages_set(inflight)
    c.reconnect_delay_set(1, 2)
    if auth.get("username"):
        c.username_pw_set(auth["username"], auth.get("password"))
    if auth.get("ca_file"):
        c.tls_set(ca_certs=auth["ca_file"])
    host, port = url.split("://")[1].split(":")
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect_async(host, int(port), clean_start=False, properties=props)
    c.loop_start()
    return c


class Collector:
    """Subscribes (QoS 1, persistent session) and keeps every (topic, payload) it receives."""

    def __init__(self, url: str, filters: list[str], client_id: str = "collector", **auth: Any):
        self.messages: list[tuple[str, bytes, bool]] = []
        self._steps: set[tuple[str, str]] = set()  # the distinct (turbine, ts) of the score topic, as they come
        self._lock = threading.Lock()
        self.filters = filters
        self.subscribed = threading.Event()
        self.c = client(
            url,
            client_id,
            {
                "on_connect": lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in filters]),
                "on_subscribe": lambda c, u, mid, rcs, p: self.subscribed.set(),
                "on_message": self._on_message,
            },
            **auth,
        )

    def ready(self) -> bool:
        """Connected and the broker acknowledged the subscriptions (nothing published after this is missed)."""
        return self.c.is_connected() and self.subscribed.is_set()

    def _on_message(self, c: paho.Client, u: object, m: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((m.topic, bytes(m.payload), bool(m.retain)))
            if m.topic.endswith("/score"):  # the daemon's records: JSON with turbine and ts (else the test fails)
                d = json.loads(m.payload)
                self._steps.add((str(d["turbine"]), str(d["ts"])))

    def steps(self) -> int:
        """How many distinct (turbine, ts) arrived on the score topic (repeats not counted). Each payload is parsed
        once, on arrival: a poll that parsed them all each time would slow the daemon it waits for."""
        with self._lock:
            return len(self._steps)

    def has_steps(self, n: int) -> bool:
        """At least `n` distinct (turbine, ts) on the score topic."""
        return self.steps() >= n

    def of(self, suffix: str) -> list[tuple[str, bytes]]:
        with self._lock:
            return [(t, p) for t, p, _ in self.messages if t.endswith(suffix)]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def publish_all(
    c: paho.Client, messages: list[tuple[str, bytes]], qos: int = 1, wait: bool = True, chunk: int = 5000
) -> None:
    """Publish in order; with `wait`, in chunks whose delivery to the broker is awaited (paho's queue is finite)."""
    for i in range(0, len(messages), chunk if wait else len(messages) or 1):
        infos = [c.publish(t, p, qos=qos) for t, p in messages[i : i + chunk]]
        if wait:
            for info in infos:
                info.wait_for_publish(timeout=60)


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def daemon_config(url: str, **sections: Any):
    """A validated RuntimeConfig for the test site on `url` (see `daemon_config_dict`)."""
    return daemon_config_from_dict(daemon_config_dict(url, **sections))


def daemon_config_dict(url: str, **sections: Any) -> dict[str, Any]:
    """runtime.yaml as plain data: historical data (bins close by later samples), free ports; `sections` merge in."""
    base: dict[str, Any] = {
        "site": SITE,
        "gateway": GATEWAY,
        "log_level": "WARNING",
        "broker": {"url": url, "reconnect_min_s": 1, "reconnect_max_s": 2},
        # historical data: bins close as later samples arrive, never by the wall clock
        "ingest": {"grace_s": 10 * 365 * 86400.0, "max_past_s": 10 * 365 * 86400.0},
        "compute": {"tick_s": 0.05},
        "health": {"metrics_host": "127.0.0.1", "metrics_port": 0, "status_interval_s": 0.5},
    }
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return base


class DaemonThread:
    """A Daemon running `run_forever` on a thread; `stop()` is the SIGTERM path."""

    def __init__(self, cfg: Any, bundle: Any, scorer: Any):
        self.daemon = Daemon(cfg, bundle, scorer)
        self.daemon.start()
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.exit_code = self.daemon.run_forever()

    def stop(self) -> int | None:
        self.daemon.request_stop()
        self.thread.join(timeout=30)
        return self.exit_code


class DaemonProcess:
    """`scada-runtime run` in a process of its own, so it can be killed with SIGKILL and its memory read. A test
    that fails before it stops one would leave it running (ticking, reconnecting to a broker that is gone) for the
    rest of the session: `kill_all` ends those, after every test (conftest)."""

    started: ClassVar[list[DaemonProcess]] = []

    def __init__(self, bundle_dir: Path, cfg: dict[str, Any], workdir: Path) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "runtime.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.bundle_dir = bundle_dir
        self.log = self.dir / "daemon.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        cmd = [sys.executable, "-m", "scada_tcn.runtime.cli", "run", "--bundle", str(self.bundle_dir), "--config",
               str(self.config)]  # fmt: skip
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=fh)
        self.starts += 1
        DaemonProcess.started.append(self)

    @classmethod
    def kill_all(cls) -> int:
        """SIGKILL every daemon process still running; returns how many were."""
        alive = [d for d in cls.started if d.alive()]
        for d in alive:
            d.kill()
        cls.started.clear()
        return len(alive)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self) -> float:
        """Resident memory of the process (VmRSS), MB; 0 when it is not running."""
        if not self.alive():
            return 0.0
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        return 0.0

    def kill(self) -> None:
        """SIGKILL: no drain, no state save, nothing flushed."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM: drain and exit; returns the exit code."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout=60)


def scores_through(url: str, daemon: DaemonThread, col: Collector, header: list[str], rows: list[list[str]],
                   timeout: float) -> dict[tuple[str, str], bytes]:  # fmt: skip
    """Publish `rows` to a running daemon, wait until every closed step is scored, and return one payload per
    (turbine, ts). QoS 1 is at-least-once, so an identical redelivery is allowed; a second, different payload for
    a step, a missing step or an extra one fails."""
    pub = client(url, "publisher")
    wait_for(lambda: pub.is_connected() and daemon.daemon.link.connected, 10, "connections")
    publish_all(pub, to_messages(header, rows))
    want = expected_steps(rows, header)
    wait_for(lambda: col.has_steps(sum(want.values())), timeout, "all scores")
    pub.disconnect()
    d = dedupe(p for _, p in col.of("/score"))
    assert d.conflicts == {}, list(d.conflicts.items())[:2]
    assert {t: sum(1 for k in d.records if k[0] == t) for t in want} == want
    return d.records


def sent_by(d: Any) -> list[tuple[str, bytes]]:
    """Every (topic, payload) the daemon `d` hands to its link from now on, tracked or not."""
    sent, real = [], d.link.publish
    d.link.publish = lambda topic, payload, retain=False, track=False: (
        bool(sent.append((topic, payload))) or real(topic, payload, retain, track)
    )
    return sent


def overflow_report(d: Any) -> dict[str, Any]:
    """The report of the publishes the daemon's full queue dropped, which goes out with the first publish the queue
    takes again: here room is made for that one and the report."""
    sent = sent_by(d)
    d.link._max_queued += 2
    d._publish("status", d.status_topic, b"{}", True)
    (report,) = [json.loads(payload) for topic, payload in sent if topic == d.errors_topic]
    return report


def reexported(bundle: Any, folder: Path, edit: Callable[[dict[str, Any]], None]) -> Any:
    """The bundle's files with bundle.json edited by `edit(doc)`: what a re-export of the same checkpoint with other
    settings gives (the model id covers the graphs and registries only)."""
    shutil.copytree(bundle.path, folder)
    doc = json.loads((folder / "bundle.json").read_text())
    edit(doc)
    (folder / "bundle.json").write_text(json.dumps(doc))
    return load_bundle(folder)


def double_levels(doc: dict[str, Any]) -> None:
    """A `reexported` edit: every per-signal level doubled (the same model, another bundle)."""
    doc["signals"]["levels"]["pooled"] = [2 * v for v in doc["signals"]["levels"]["pooled"]]


def by_key(payloads: list[bytes]) -> dict[tuple[str, str], set[bytes]]:
    """(turbine, ts) -> the distinct payloads received for it."""
    out: dict[tuple[str, str], set[bytes]] = {}
    for p in payloads:
        d = json.loads(p)
        out.setdefault((d["turbine"], d["ts"]), set()).add(p)
    return out
