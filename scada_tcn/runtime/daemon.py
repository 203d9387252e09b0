"""`scada-runtime run`: the MQTT edge daemon around the shared scoring `Engine`.

Threads: paho's network thread only enqueues inbound messages (bounded queue); the processing loop (the
caller of `run_forever`) decodes, bins, scores and publishes; a status thread refreshes the retained status;
the health server serves /metrics and /healthz.

The message boundary (`_handle`) is the only place that catches: a message is decoded and validated in full
before any state changes (runtime.telemetry), and whatever is wrong with it is rejected, counted
(`rejected_total{reason}`), logged, reported on the errors topic, and the loop carries on. Everything else fails
fast: a scoring error or a refused subscription stops the daemon with a non-zero exit (systemd restarts it).

Loop iteration: take the messages waiting (at least one tick's wait) -> ingest each -> close bins past their
grace on the wall clock (once per tick) -> `Engine.flush()` scores all ready turbines together -> publish
(QoS 1) -> acknowledge the processed telemetry -> heartbeat. `request_stop()` (SIGTERM) finishes the messages
already received, publishes the status "offline", waits for the publish queue to drain, disconnects cleanly.

With `state.path`, the engine's state (every turbine's open bins, features, ring buffer and alert state) is saved
atomically every `state.save_interval_s` and on stop, and restored at start, so a restart resumes scoring at the
next step instead of warming every turbine up again; a state of another model is moved aside, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scada_tcn.runtime.daemon_config import RuntimeConfig, redacted
from scada_tcn.runtime.engine import Engine, Output, iso_utc
from scada_tcn.runtime.health import HealthServer, Heartbeat
from scada_tcn.runtime.mqtt import Message, MqttLink, Publish
from scada_tcn.runtime.prometheus import RuntimeMetrics
from scada_tcn.runtime.state_file import load_state, save_state
from scada_tcn.runtime.telemetry import Rejection, TelemetryDecoder, topic_filter

__all__ = ["Daemon", "setup_logging"]

log = logging.getLogger("scada.runtime.daemon")
_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": iso_utc(int(record.created * 1e9)),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: v for k, v in vars(record).items() if k not in _STD_ATTRS})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(level: str) -> None:
    """Structured JSON logs on stderr for the `scada.runtime` loggers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("scada.runtime")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class Daemon:
    """The edge daemon; see the module docstring. `clock` returns wall-clock ns (injectable for tests)."""

    def __init__(self, cfg: RuntimeConfig, bundle: Any, scorer: Any, clock: Callable[[], int] = time.time_ns):
        self.cfg = cfg
        self.bundle = bundle
        self.clock = clock
        self.metrics = RuntimeMetrics()
        self.heartbeat = Heartbeat(cfg.health.stall_s)
        mapping = dict(cfg.mapping.columns) or dict(bundle.column_mapping)
        filt, level = topic_filter(cfg.topics.telemetry, cfg.site, cfg.gateway)
        self.telemetry_filter = filt
        self.decoder = TelemetryDecoder(
            channels=bundle.spec.channels,
            key_of_channel=mapping,
            turbine_level=level,
            max_payload_bytes=cfg.ingest.max_payload_bytes,
            max_future_s=cfg.ingest.max_future_s,
            max_past_s=cfg.ingest.max_past_s,
            allowed_turbines=cfg.ingest.turbines,
        )
        self.engine = Engine(
            bundle,
            scorer,
            cfg.ingest.grace_s,
            cfg.ingest.max_turbines,
            cfg.compute.max_batch,
            on_inference=self._observe_inference,
            drift_window=cfg.health.drift_window,
        )
        self.inbound: queue.Queue[Message] = queue.Queue(maxsize=cfg.queues.inbound)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._last_tick_ns = 0
        self._overflowed = 0
        self._bins_closed = 0
        self.status_topic = cfg.topics.status.format(gateway=cfg.gateway, site=cfg.site)
        self.errors_topic = cfg.topics.errors.format(gateway=cfg.gateway, site=cfg.site)
        self.link = MqttLink(
            cfg.broker,
            client_id=cfg.broker.client_id or f"scada-runtime-{cfg.gateway}",
            handlers={filt: self._enqueue},
            will=Publish(self.status_topic, self._status_payload("offline"), retain=True),
            receive_maximum=cfg.queues.receive_maximum,
            max_queued=cfg.queues.outbound,
            on_connected=self._on_connected,
            on_connection_change=lambda up: self.metrics.connected.set(1 if up else 0),
            on_connect_failed=lambda reason: self.metrics.connect_failures.labels(reason=reason).inc(),
            on_unrouted=lambda m: self._reject(m, Rejection("bad_topic", "no handler for this topic")),
        )
        self._last_save_ns = 0
        self.health: HealthServer | None = None
        self._status_thread = threading.Thread(target=self._status_loop, name="status", daemon=True)

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the health server, the MQTT connection (background, with retries) and the status refresh."""
        h = self.cfg.health
        self.health = HealthServer(
            h.metrics_host, h.metrics_port, self.heartbeat, self.metrics, clock=lambda: self.clock() / 1e9
        )
        log.info(
            "starting",
            extra={
                "config": redacted(self.cfg),
                "model_id": self.bundle.model_id,
                "subscription": self.telemetry_filter,
                "health_port": self.health.port,
            },
        )
        self._restore_state()
        self.link.start()
        self._status_thread.start()

    def request_stop(self) -> None:
        """Ask the loop to drain and exit (safe from a signal handler)."""
        self._stop.set()

    def run_forever(self) -> int:
        """Process until `request_stop()`; then drain and disconnect. Returns the exit code (0 = clean)."""
        try:
            while not self._stop.is_set():
                self.step(timeout=self.cfg.compute.tick_s)
                if self.link.fatal is not None:
                    raise RuntimeError(self.link.fatal)
            self.step(timeout=0.0)  # messages already received are processed and acknowledged
        finally:
            self._shutdown()
        return 0

    def _restore_state(self) -> None:
        """Resume from the state file when there is one of this model; another model's state is set aside."""
        path = self.cfg.state.path
        if path is None or not Path(path).is_file():
            return
        try:
            self.engine.load_state_dict(load_state(path))
        except ValueError as e:
            aside = Path(path).with_name(Path(path).name + ".unused")
            os.replace(path, aside)
            log.warning(
                "state file not used; every turbine warms up again", extra={"reason": str(e), "moved_to": str(aside)}
            )
            return
        log.info("state restored", extra={"path": path, "turbines": len(self.engine.fleet)})

    def _save_state(self) -> None:
        if self.cfg.state.path is not None:
            save_state(self.cfg.state.path, self.engine.state_dict())
            self._last_save_ns = self.clock()

    def _shutdown(self) -> None:
        self._stopped.set()
        if self.cfg.state.path is None:  # no state file to keep fleet-relative steps waiting for peers: send them
            self._publish_outputs(self.engine.flush(final=True))
        self._save_state()
        drained = self.link.stop(
            [Publish(self.status_topic, self._status_payload("offline"), retain=True)], timeout=10.0
        )
        log.info("stopped", extra={"publishes_drained": drained, "queue_depth": self.link.queue_depth})
        if self.health is not None:
            self.health.close()

    # ------------------------------------------------------------------------------------------- the loop
    def step(self, timeout: float) -> int:
        """One loop iteration (see the module docstring); returns the number of messages processed."""
        batch: list[Message] = []
        try:
            batch.append(self.inbound.get(timeout=timeout) if timeout > 0 else self.inbound.get_nowait())
            while len(batch) < 10000:
                batch.append(self.inbound.get_nowait())
        except queue.Empty:
            pass
        now = self.clock()
        for msg in batch:
            self._handle(msg, now)
        if now - self._last_tick_ns >= self.cfg.compute.tick_s * 1e9:
            self.engine.tick(now)
            self._last_tick_ns = now
        self.metrics.bins_closed.inc(self.engine.fleet.bins_closed - self._bins_closed)
        self._bins_closed = self.engine.fleet.bins_closed
        self._publish_outputs(self.engine.flush())
        for msg in batch:
            self.link.ack(msg)
        self.heartbeat.beat(self.clock() / 1e9)
        self.metrics.inbound_depth.set(self.inbound.qsize())
        self.metrics.queue_depth.set(self.link.queue_depth)
        self.metrics.turbines.set(len(self.engine.fleet))
        self.metrics.fleet_waiting.set(self.engine.waiting())
        self.metrics.alerts_on.set(self.engine.alerts_on())
        self.metrics.score_drift.set(self.engine.drift.get()["ks"])
        if self.cfg.state.path is not None and now - self._last_save_ns >= self.cfg.state.save_interval_s * 1e9:
            self._save_state()
        return len(batch)

    def _enqueue(self, msg: Message) -> None:
        """paho thread: hand the message to the loop. QoS 1 telemetry is never dropped: when the queue is full
        this thread waits, paho stops reading the socket and the broker holds the rest (TCP backpressure; not
        every broker honours our Receive Maximum). Only QoS 0 overflow is dropped, counted and reported."""
        if msg.qos > 0:
            while not self._stop.is_set():
                try:
                    self.inbound.put(msg, timeout=0.5)
                    return
                except queue.Full:
                    continue
            return  # stopping: unacknowledged, so the broker redelivers it to the next session
        try:
            self.inbound.put_nowait(msg)
        except queue.Full:
            self._reject(msg, Rejection("inbound_queue_full", f"queues.inbound={self.cfg.queues.inbound} is full"))

    def _handle(self, msg: Message, now_ns: int) -> None:
        """The message boundary: decode, validate, ingest; any failure is rejected, counted and reported."""
        self.metrics.messages_in.inc()
        try:
            res = self.decoder.decode(msg.topic, msg.payload, now_ns)
            if isinstance(res, Rejection):
                self._reject(msg, res)
                return
            if not self.engine.fleet.has_room(res.turbine):
                limit = self.cfg.ingest.max_turbines
                self._reject(msg, Rejection("too_many_turbines", f"ingest.max_turbines={limit} reached"))
                return
            if not self.engine.ingest(res):
                self.metrics.late.inc()
            self.heartbeat.processed(now_ns / 1e9)
            self.metrics.last_message.set(now_ns / 1e9)
        except Exception as e:  # the boundary: bad input must never stop the daemon
            log.exception("internal error while handling a message", extra={"topic": msg.topic[:200]})
            self._reject(msg, Rejection("internal_error", f"{type(e).__name__}: {e}"[:300]))

    def _reject(self, msg: Message, rej: Rejection) -> None:
        self.metrics.rejected.labels(reason=rej.reason).inc()
        log.debug("rejected", extra={"reason": rej.reason, "detail": rej.detail, "topic": msg.topic[:200]})
        report = {
            "gateway": self.cfg.gateway,
            "reason": rej.reason,
            "detail": rej.detail,
            "topic": msg.topic[:200],
            "bytes": len(msg.payload),
            "at": iso_utc(self.clock()),
        }
        self._publish("error", self.errors_topic, json.dumps(report, sort_keys=True).encode(), False)

    # ----------------------------------------------------------------------------------------- publishing
    def _topic(self, out: Output) -> str:
        tpl = {
            "score": self.cfg.topics.score,
            "alert": self.cfg.topics.alert,
            "alert_state": self.cfg.topics.alert_state,
        }[out.kind]
        return tpl.format(site=self.cfg.site, turbine=out.turbine, gateway=self.cfg.gateway)

    def _publish(self, kind: str, topic: str, payload: bytes, retain: bool) -> None:
        if not self.link.publish(topic, payload, qos=1, retain=retain):
            self.metrics.overflow.labels(kind=kind).inc()
            self._overflowed += 1
            log.error("publish queue full: message dropped", extra={"kind": kind, "topic": topic})

    def _publish_outputs(self, outputs: list[Output]) -> None:
        for out in outputs:
            self._publish(out.kind, self._topic(out), out.payload, out.retain)
            if out.kind == "score":
                self.metrics.scores.labels(status="warmup" if b'"status":"warmup"' in out.payload else "ok").inc()
            elif out.kind == "alert":
                self.metrics.alerts.labels(state="on" if b'"state":"on"' in out.payload else "off").inc()

    def _observe_inference(self, seconds: float, windows: int) -> None:
        self.metrics.inference.observe(seconds)
        self.metrics.batch.observe(windows)

    # ------------------------------------------------------------------------------------------- status
    def _status_payload(self, state: str) -> bytes:
        now = self.clock()
        hb = self.heartbeat
        doc = {
            "state": state,
            "gateway": self.cfg.gateway,
            "site": self.cfg.site,
            "model_id": self.bundle.model_id,
            "at": iso_utc(now),
            "last_message_at": None if hb.last_message is None else iso_utc(int(hb.last_message * 1e9)),
            "loop_age_s": round(hb.age(now / 1e9), 3),
            "turbines": len(self.engine.fleet),
            "score_drift": self.engine.score_drift(),
        }
        return json.dumps(doc, sort_keys=True).encode()

    def _on_connected(self) -> list[Publish]:
        out = [Publish(self.status_topic, self._status_payload("online"), retain=True)]
        if self._overflowed:
            report = {
                "gateway": self.cfg.gateway,
                "reason": "publish_queue_overflow",
                "dropped": self._overflowed,
                "detail": f"queues.outbound={self.cfg.queues.outbound} was full while disconnected",
                "at": iso_utc(self.clock()),
            }
            out.append(Publish(self.errors_topic, json.dumps(report, sort_keys=True).encode()))
            self._overflowed = 0
        return out

    def _status_loop(self) -> None:
        interval = self.cfg.health.status_interval_s
        while not self._stopped.wait(interval):
            now_s = self.clock() / 1e9
            self.metrics.heartbeat_age.set(self.heartbeat.age(now_s))
            if self.link.connected:
                state = "stalled" if self.heartbeat.stalled(now_s) else "online"
                self.link.publish(self.status_topic, self._status_payload(state), qos=1, retain=True)


def run(cfg: RuntimeConfig, bundle_dir: str) -> int:
    """Load the bundle, start the daemon, serve until SIGTERM/SIGINT, drain and return the exit code."""
    import signal

    from scada_tcn.runtime.bundle import load_bundle
    from scada_tcn.runtime.scorer import OnnxScorer

    setup_logging(cfg.log_level)
    bundle = load_bundle(bundle_dir)
    scorer = OnnxScorer(bundle, cfg.compute.intra_op_threads, cfg.compute.inter_op_threads)
    daemon = Daemon(cfg, bundle, scorer)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: daemon.request_stop())
    daemon.start()
    return daemon.run_forever()
