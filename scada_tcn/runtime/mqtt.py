"""The only module that imports paho: a small publish / subscribe / ack / stop surface over one MQTT v5 client.

Contract
--------
* `MqttLink(broker_cfg, client_id, handlers, will, ...)`: `handlers` maps subscription filters to callables;
  the subscriptions are derived from that table (one list), each filter is subscribed with QoS 1 on every
  successful connect, and paho's own filter matching routes each message to its handler (a message that
  matches no filter goes to `on_unrouted`). Handlers run on paho's network thread and must only enqueue.
* Persistent session: clean_start is never set, and the session expiry keeps our subscriptions and queued
  telemetry at the broker while we are away. Inbound QoS 1 messages are acknowledged by `ack(msg)` only, after
  the caller has processed them (manual ack), so a crash loses nothing the broker delivered; an ack for a
  message of an earlier connection is skipped (its packet id may be reused; the broker redelivers it).
* Reconnection: paho's, with capped exponential backoff (reconnect_min_s doubling up to reconnect_max_s).
  CONNACK and SUBACK reason codes are checked: a refused connect is reported to `on_connect_failed` and never
  marks us connected; a refused subscription sets `fatal` (the daemon stops with that message).
* Publishing: `publish(topic, payload, qos=1, retain)` hands the message to paho, which keeps QoS 1 messages
  while disconnected and sends them after reconnect; the queue (in flight + waiting) is bounded by
  `max_queued`. On overflow `publish` returns False and `on_overflow` is called: never a silent drop.
* The last will (retained) is set from `will`; `on_connected()` returns the retained messages to (re)publish
  on every connect (status "online"). `stop(final)` publishes `final`, waits up to `timeout` for the queue to
  drain, disconnects cleanly (no last will) and stops the network thread.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from scada_tcn.runtime.daemon_config import BrokerCfg

__all__ = ["Message", "MqttLink", "Publish"]

log = logging.getLogger("scada.runtime.mqtt")


class Message(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int
    generation: int  # connection it arrived on (acks are only valid on that connection)
    received_ns: int


class Publish(NamedTuple):
    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1


def _noop(*_: object) -> None:
    return None


class MqttLink:
    """One MQTT v5 client; see the module docstring."""

    def __init__(
        self,
        broker: BrokerCfg,
        client_id: str,
        handlers: dict[str, Callable[[Message], None]],
        will: Publish,
        receive_maximum: int,
        max_queued: int,
        on_connected: Callable[[], list[Publish]] = lambda: [],
        on_connection_change: Callable[[bool], None] = _noop,
        on_connect_failed: Callable[[str], None] = _noop,
        on_overflow: Callable[[Publish], None] = _noop,
        on_unrouted: Callable[[Message], None] = _noop,
    ) -> None:
        url = urlparse(broker.url)
        if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
            raise ValueError(f"MqttLink: broker url must be mqtt:// or mqtts://host:port, got {broker.url!r}")
        self.broker = broker
        self.client_id = client_id
        self.handlers = dict(handlers)
        self.will = will
        self.host = url.hostname
        self.port = url.port or (8883 if url.scheme == "mqtts" else 1883)
        self.tls = url.scheme == "mqtts"
        self._on_connected = on_connected
        self._on_change = on_connection_change
        self._on_connect_failed = on_connect_failed
        self._on_overflow = on_overflow
        self._on_unrouted = on_unrouted
        self._lock = threading.Lock()
        self._published = 0  # QoS 1 messages handed to paho
        self._acked = 0  # ... and acknowledged by the broker (a PUBACK may beat the count of its publish)
        self._connected = False
        self._generation = 0
        self.fatal: str | None = None
        self._client = self._build(receive_maximum, max_queued)

    def _build(self, receive_maximum: int, max_queued: int) -> paho.Client:
        c = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5, manual_ack=True
        )
        c.max_queued_messages_set(max_queued)
        c.max_inflight_messages_set(min(max_queued, 1000))
        c.reconnect_delay_set(self.broker.reconnect_min_s, self.broker.reconnect_max_s)
        b = self.broker
        if b.username:
            password = b.password
            if b.password_file is not None:
                password = Path(b.password_file).read_text(encoding="utf-8").splitlines()[0]
            c.username_pw_set(b.username, password)
        if self.tls:
            for f in (b.tls.ca_file, b.tls.cert_file, b.tls.key_file):
                if f is not None and not Path(f).is_file():
                    raise ValueError(f"broker.tls: file {f} does not exist")
            c.tls_set(
                ca_certs=b.tls.ca_file, certfile=b.tls.cert_file, keyfile=b.tls.key_file, cert_reqs=ssl.CERT_REQUIRED
            )
            c.tls_insecure_set(b.tls.insecure)
        c.will_set(self.will.topic, self.will.payload, qos=1, retain=True)
        self._props = Properties(PacketTypes.CONNECT)
        self._props.SessionExpiryInterval = int(b.session_expiry_s)
        self._props.ReceiveMaximum = int(receive_maximum)
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_subscribe = self._handle_subscribe
        c.on_publish = self._handle_publish
        c.on_message = self._handle_unrouted
        for filt, handler in self.handlers.items():
            c.message_callback_add(filt, self._route(handler))
        return c

    # -------------------------------------------------------------------------------------------- callbacks
    def _message(self, m: paho.MQTTMessage) -> Message:
        return Message(
            m.topic, bytes(m.payload), m.qos, bool(m.retain), bool(m.dup), m.mid, self._generation, time.time_ns()
        )

    def _route(self, handler: Callable[[Message], None]) -> Callable[..., None]:
        def cb(client: paho.Client, userdata: object, m: paho.MQTTMessage) -> None:
            handler(self._message(m))

        return cb

    def _handle_unrouted(self, client: paho.Client, userdata: object, m: paho.MQTTMessage) -> None:
        msg = self._message(m)
        self._on_unrouted(msg)
        self.ack(msg)

    def _handle_connect(self, client: paho.Client, userdata: object, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection", extra={"reason": str(reason_code), "host": self.host})
            self._on_connect_failed(str(reason_code))
            return
        with self._lock:
            self._connected = True
            self._generation += 1
        log.info(
            "connected", extra={"host": self.host, "port": self.port, "session_present": bool(flags.session_present)}
        )
        opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE)
        if self.handlers:
            client.subscribe([(f, opts) for f in self.handlers])
        self._on_change(True)
        for p in self._on_connected():
            self.publish(p.topic, p.payload, p.qos, p.retain)

    def _handle_subscribe(self, client: paho.Client, userdata: object, mid, reason_codes, properties) -> None:
        bad = [(f, str(rc)) for f, rc in zip(self.handlers, reason_codes) if rc.is_failure]
        if bad:
            self.fatal = f"broker refused subscriptions {bad}; check the broker ACL for this user"
            log.error("subscription refused", extra={"refused": bad})

    def _handle_disconnect(self, client: paho.Client, userdata: object, flags, reason_code, properties) -> None:
        with self._lock:
            was = self._connected
            self._connected = False
        if was:
            level = logging.INFO if reason_code == 0 else logging.WARNING
            log.log(level, "disconnected", extra={"reason": str(reason_code)})
            self._on_change(False)

    def _handle_publish(self, client: paho.Client, userdata: object, mid, reason_code, properties) -> None:
        with self._lock:
            self._acked += 1
        if reason_code.is_failure:
            log.error("broker refused a publish", extra={"mid": mid, "reason": str(reason_code)})

    # ------------------------------------------------------------------------------------------------ API
    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def queue_depth(self) -> int:
        with self._lock:
            return max(self._published - self._acked, 0)

    def start(self) -> None:
        """Connect in the background (retrying with backoff) and start the network thread."""
        self._client.connect_async(
            self.host, self.port, keepalive=self.broker.keepalive_s, clean_start=False, properties=self._props
        )
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        """Queue one message (sent now, or after reconnect); False (and on_overflow) when the queue is full."""
        # never hold our lock while calling paho: paho calls on_publish holding its own message mutex
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            self._on_overflow(Publish(topic, payload, retain, qos))
            return False
        if qos > 0:
            with self._lock:
                self._published += 1
        return True

    def ack(self, msg: Message) -> None:
        """Acknowledge a processed QoS 1 message (skipped when it came on an earlier connection)."""
        if msg.qos > 0 and msg.generation == self._generation and self._connected:
            self._client.ack(msg.mid, msg.qos)

    def wait_drained(self, timeout: float) -> bool:
        """Wait until every queued publish is acknowledged by the broker; False on timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.queue_depth == 0:
                return True
            time.sleep(0.01)
        return self.queue_depth == 0

    def stop(self, final: list[Publish], timeout: float = 5.0) -> bool:
        """Publish `final`, wait for the queue to drain, disconnect cleanly; True when everything was delivered."""
        for p in final:
            self.publish(p.topic, p.payload, p.qos, p.retain)
        drained = self.wait_drained(timeout) if self._connected else False
        self._client.disconnect()
        self._client.loop_stop()
        return drained
