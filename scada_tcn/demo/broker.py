"""A local Mosquitto for the demo (and the tests), and the demo's run of the daemon through it.

`MosquittoProcess`: one broker on a free loopback port, `log_dest stderr` into a log file, persistence in its
folder, optional password file and TLS listener, stopped by pid (SIGTERM, so it saves its persistence file).
It saves every 60 s while it runs, as deploy/mosquitto.conf does: Mosquitto writes its whole store, every
queued message, on each save, on its one thread. Saving every second made a 100,000-message backlog take about
a third longer (the backlog test scored 2,689 steps/s against 3,942/s).
`run_through_broker`: starts a broker and `runtime.daemon.Daemon` on a thread, publishes a raw SCADA CSV as
JSON telemetry (QoS 1, in time order) with progress, waits until every closed step has a record (counted in
distinct `seq` per turbine after deduplication), writes the deduplicated scores and the alerts as JSON lines,
stops everything and reports steps sent and scored, duplicates and reconnects (`BrokerRun`). Historical data:
bins close as later samples arrive (a grace of years), never by the wall clock, exactly as `scada-runtime replay`
closes them.
"""

from __future__ import annotations

import csv
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scada_tcn.runtime.binning import bin_end_ns
from scada_tcn.runtime.telemetry import parse_timestamp_ns

SITE, GATEWAY = "demo", "demo-gw"


def find_mosquitto() -> str | None:
    """The mosquitto binary (Debian installs it to /usr/sbin, which is not always on PATH), or None."""
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MosquittoProcess:
    """One mosquitto process; `start()` again after `stop()` restarts it with its persisted sessions."""

    def __init__(
        self,
        exe: str,
        workdir: Path,
        users: dict[str, str] | None = None,
        tls: dict[str, Path] | None = None,
        inflight: int = 0,
        max_packet: int = 0,
    ) -> None:
        self.exe = exe
        self.inflight = inflight  # max_inflight_messages (0: none), which Mosquitto sends as its Receive Maximum
        self.max_packet = max_packet  # max_packet_size (0: none), sent as its Maximum Packet Size
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.users = users
        self.tls = tls
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "mosquitto.log"
        self.conf = self.dir / "mosquitto.conf"
        self._errlog: Any = None
        self._write_conf()

    def set_inflight(self, inflight: int) -> None:
        """A new max_inflight_messages (Mosquitto's Receive Maximum), from the next `start()`."""
        self.inflight = inflight
        self._write_conf()

    def _write_conf(self) -> None:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "log_dest stderr",
            f"user {getpass.getuser()}",  # as root mosquitto would switch to 'mosquitto' and lose the folder
            "log_type error",
            "log_type notice",
            "log_type warning",
            "persistence true",
            f"persistence_location {self.dir}/",
            "autosave_interval 60",  # as deploy/mosquitto.conf; a stop (SIGTERM) saves it all
            "max_queued_messages 0",
            f"max_inflight_messages {self.inflight}",
            "persistent_client_expiration 1d",
        ] + ([f"max_packet_size {self.max_packet}"] if self.max_packet else [])
        if self.users:
            passwd = shutil.which("mosquitto_passwd")
            if passwd is None:
                raise RuntimeError("mosquitto_passwd is not installed (it comes with the mosquitto package)")
            pw = self.dir / "passwd"
            pw.write_text("".join(f"{u}:{p}\n" for u, p in self.users.items()))
            pw.chmod(0o600)
            subprocess.run([passwd, "-U", str(pw)], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines += ["allow_anonymous true"]
        if self.tls:
            lines += [f"cafile {self.tls['ca']}", f"certfile {self.tls['cert']}", f"keyfile {self.tls['key']}"]
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self._errlog = open(self.log, "ab")
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=self._errlog, stderr=self._errlog)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """SIGTERM by pid, then wait (SIGKILL after 10 s)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None
        if self._errlog is not None:
            self._errlog.close()
            self._errlog = None


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None  # empty or non-numeric: the gateway sends null (missing)


def telemetry_messages(header: list[str], rows: list[list[str]], site: str) -> list[tuple[str, bytes]]:
    """(topic, JSON payload) per raw CSV row, in row order, channels under their column names."""
    ti, ii = header.index("timestamp"), header.index("turbine_id")
    chans = [(j, c) for j, c in enumerate(header) if j not in (ti, ii)]
    return [
        (
            f"scada/{site}/{r[ii]}/telemetry",
            json.dumps({"ts": r[ti], "values": {c: _number(r[j]) for j, c in chans}}).encode(),
        )
        for r in rows
    ]


def closed_steps(header: list[str], rows: list[list[str]], dt_seconds: int) -> dict[str, int]:
    """Per turbine, the steps the daemon closes once all rows are in: every bin from its first to its last,
    less the last one, which stays open until a later sample arrives."""
    ts = np.array([parse_timestamp_ns(r[header.index("timestamp")]) for r in rows], dtype=np.int64)
    labels = bin_end_ns(ts, dt_seconds)
    ids = np.array([r[header.index("turbine_id")] for r in rows])
    return {
        str(t): int((labels[ids == t].max() - labels[ids == t].min()) // (dt_seconds * 10**9)) for t in np.unique(ids)
    }


@dataclass(frozen=True)
class BrokerRun:
    """What the demo's broker run did: steps sent and scored per turbine, redeliveries, reconnects."""

    how: str
    messages: int
    sent: dict[str, int]  # closed steps per turbine in the stream
    scored: dict[str, int]  # distinct steps per turbine the daemon published a record for
    duplicates: int  # identical records received again (QoS 1 redelivery)
    conflicts: int  # steps received with two different payloads (never expected)
    reconnects: int
    seconds: float

    @property
    def complete(self) -> bool:
        return self.conflicts == 0 and all(self.scored.get(t, 0) >= n for t, n in self.sent.items())


def run_through_broker(
    bundle_dir: Path,
    stream_csv: Path,
    scores_out: Path,
    alerts_out: Path,
    workdir: Path,
    required: bool = False,
    log: Callable[[str], None] = print,
    stall_s: float = 180.0,
) -> BrokerRun | None:
    """Score `stream_csv` through a local broker and the daemon; None when mosquitto is absent (and not required).

    Publishes the stream (QoS 1, in time order) with progress, then waits until every closed step of every
    turbine has a record (distinct `seq` per turbine, `runtime.records.dedupe`), or until nothing new arrives for
    `stall_s`; writes the deduplicated score records and the alert records, and says what happened."""
    import paho.mqtt.client as paho

    from scada_tcn.runtime.bundle import load_bundle
    from scada_tcn.runtime.daemon import Daemon
    from scada_tcn.runtime.daemon_config import daemon_config_from_dict
    from scada_tcn.runtime.records import dedupe
    from scada_tcn.runtime.stream import make_scorer

    exe = find_mosquitto()
    if exe is None:
        if required:
            raise RuntimeError("mosquitto is not installed: apt-get install -y mosquitto")
        return None
    broker = MosquittoProcess(exe, workdir)
    broker.start()
    got: dict[str, list[bytes]] = {"score": [], "alert": []}
    lock = threading.Lock()

    def on_message(c: Any, u: Any, m: Any) -> None:
        kind = m.topic.rsplit("/", 1)[-1]
        if kind in got:
            with lock:
                got[kind].append(bytes(m.payload))

    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="demo-collector", protocol=paho.MQTTv5)
    subscribed = threading.Event()
    sub.on_message = on_message
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe([(f"scada/{SITE}/+/score", 1), (f"scada/{SITE}/+/alert", 1)])
    sub.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="demo-scada", protocol=paho.MQTTv5)
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    bundle = load_bundle(bundle_dir)
    years = 10 * 365 * 86400.0
    state_dir = Path(workdir) / "daemon_state"  # a state file as in production; a run in the same folder starts afresh
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    cfg = daemon_config_from_dict(
        {
            "site": SITE,
            "gateway": GATEWAY,
            "log_level": "WARNING",
            "state": {"path": str(state_dir / "state.npz")},
            "broker": {"url": broker.url},
            "ingest": {"grace_s": years, "max_past_s": years},
            "compute": {"tick_s": 0.05},
            "health": {"metrics_host": "127.0.0.1", "metrics_port": 0},
        }
    )
    daemon = Daemon(cfg, bundle, make_scorer(bundle, cfg.compute.engine))
    daemon.start()
    thread = threading.Thread(target=daemon.run_forever, daemon=True)
    thread.start()
    t0 = time.monotonic()

    seqs: dict[str, set[int]] = {}
    counted = 0

    def scored() -> dict[str, int]:
        """Distinct steps per turbine so far; parses only the records that arrived since the last call (the
        daemon runs on a thread of this process: re-parsing every record would take its CPU)."""
        nonlocal counted
        with lock:
            new = got["score"][counted:]
        counted += len(new)
        for payload in new:
            d = json.loads(payload)
            seqs.setdefault(d["turbine"], set()).add(int(d["seq"]))
        return {t: len(v) for t, v in seqs.items()}

    try:
        if not subscribed.wait(20) or not _wait(lambda: daemon.link.connected, 20):
            raise RuntimeError("the demo's collector or daemon could not connect to the local broker")
        with stream_csv.open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            rows = list(reader)
        order = pd.to_datetime([r[header.index("timestamp")] for r in rows], utc=True, format="ISO8601")
        rows = [rows[k] for k in order.argsort(kind="stable")]
        msgs = telemetry_messages(header, rows, SITE)
        sent = closed_steps(header, rows, bundle.spec.dt_seconds)
        total = sum(sent.values())
        log(f"publishing {len(msgs):,} telemetry messages ({total:,} steps of {len(sent)} turbines) to {broker.url}")
        last_log = 0.0
        for i in range(0, len(msgs), 2000):
            for info in [pub.publish(t, p, qos=1) for t, p in msgs[i : i + 2000]]:
                info.wait_for_publish(timeout=120)
            if time.monotonic() - last_log > 5 or i + 2000 >= len(msgs):
                last_log = time.monotonic()
                n = sum(scored().values())
                rate = n / max(last_log - t0, 1e-9)
                log(f"  published {min(i + 2000, len(msgs)):,}/{len(msgs):,}; scored {n:,}/{total:,} steps "
                    f"({rate:,.0f} steps/s)")  # fmt: skip
        best, best_t = 0, time.monotonic()
        while True:
            by_turbine = scored()
            n = sum(min(by_turbine.get(t, 0), k) for t, k in sent.items())
            if n >= total or time.monotonic() - best_t > stall_s:
                break
            if n > best:
                best, best_t = n, time.monotonic()
            if time.monotonic() - last_log > 5:
                last_log = time.monotonic()
                log(f"  scored {n:,}/{total:,} steps ({n / (last_log - t0):,.0f} steps/s)")
            time.sleep(0.2)
    finally:
        daemon.request_stop()
        thread.join(timeout=60)
        for c in (pub, sub):
            c.disconnect()
            c.loop_stop()
        broker.stop()
    with lock:
        scores, alerts = list(got["score"]), list(got["alert"])
    d = dedupe(scores)
    scores_out.write_bytes(b"".join(p + b"\n" for p in d.records.values()))
    alerts_out.write_bytes(b"".join(p + b"\n" for p in dict.fromkeys(alerts)))
    return BrokerRun(
        how=f"through a local Mosquitto broker ({broker.url}) and scada-runtime's daemon",
        messages=len(msgs),
        sent=sent,
        scored={t: len(v) for t, v in d.seqs().items()},
        duplicates=d.duplicates,
        conflicts=len(d.conflicts),
        reconnects=max(daemon.link.connects - 2, 0),  # a subscriber and a publisher connect once each
        seconds=time.monotonic() - t0,
    )


def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()
