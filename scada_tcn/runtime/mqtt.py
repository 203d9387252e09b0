"""A small publish / subscribe / ack / stop surface over two MQTT v5 clients (with `runtime.presence`, the only
modules that import paho).

Flow control (why the connection never starves and memory stays bounded)
------------------------------------------------------------------------
No network thread ever waits on the processing loop: while one waits, no PINGREQ goes out and no PUBACK is sent,
and the broker drops the client after 1.5 x the keepalive (then redelivers everything in flight, which makes a
backlog worse; the earlier design, which blocked paho's thread on a full queue, was dropped three times in a
50k-message backlog). Message handlers only append to the daemon's queue and return. What bounds memory:

1. MQTT v5 flow control: the subscriber's CONNECT carries Receive Maximum = `queues.receive_maximum`, and QoS 1
   telemetry is acknowledged manually, only once the daemon has made it durable (`runtime.journal`). A broker
   that honours it has at most that many unacknowledged messages in flight. Mosquitto 2.0.11 (Debian 12) does
   not under a steady stream of acknowledgements (seen here: 777 in flight for a Receive Maximum of 20; fixed in
   2.0.13, "various fixes around inflight quota management"), hence:
2. Two connections. The telemetry subscriber runs on a network loop of our own (paho's `socket` / `loop_read` /
   `loop_write` / `loop_misc`, as paho documents for external event loops) that stops reading its socket while
   the daemon's queue holds `queues.inbound` messages (`may_read()` is False): TCP pushes back and the broker keeps
   the rest of the backlog. Its writes (PUBACKs, PINGREQs) go on all the time, and every keepalive / 4 while
   paused it reads what its socket holds, at most Receive Maximum messages, so the PINGRESP is read in time.
   Mosquitto queues a PINGRESP behind every message in flight to us, so while reads are held back an unanswered
   ping does not end the connection (`_Client._check_keepalive`); pings still go out every keepalive.
   Scores, alerts and status go out on a second client (`<client_id>-pub`, paho's own loop) whose PUBACKs are
   never stuck behind paused telemetry; the daemon stops taking telemetry while `queues.publish_backlog`
   publishes wait for their PUBACK, so output that cannot leave holds input back instead of piling up.
3. The broker's Receive Maximum (MQTT v5 section 4.9, from each CONNACK; 65,535 when absent) is our send quota:
   at most that many QoS 1 publishes are handed to paho unacknowledged, the rest wait here in publish order and
   go out as PUBACKs come back. paho does not honour it (it sends up to its own in-flight limit, and every queued
   message at once after a reconnect); a broker may disconnect a client that exceeds it (reason 0x93), and
   Mosquitto advertises its `max_inflight_messages` (20 unless configured). paho's own in-flight limit is off, so
   it never scans its queue after an ack. After a reconnect to a broker with a smaller quota, what paho holds
   beyond it is taken back into that queue (in order) before paho resends the rest.
4. The broker's Maximum Packet Size (from each CONNACK; none when absent): a publish whose PUBLISH packet would be
   larger is refused by `publish` (False), never sent. Sent, it would make the broker close the connection, and
   paho would resend it on every reconnect: the publisher would be wedged. `fits(topic, payload)` tells which
   refusal it was and `max_payload(topic)` how large a payload may be (the daemon sizes score batches with it).

Contract
--------
* `MqttLink(broker_cfg, client_id, handlers, will, ...)`: `handlers` maps subscription filters to callables;
  the subscriptions are derived from that table (one list), each filter is subscribed with QoS 1 on every
  successful connect, and paho's own filter matching routes each message to its handler (a message that
  matches no filter goes to `on_unrouted`). Handlers run on the subscriber's network thread and only enqueue.
* Persistent sessions: clean_start is never set, and the session expiry keeps our subscriptions and queued
  telemetry at the broker while we are away. Inbound QoS 1 messages are acknowledged by `ack(msg)` only; an ack
  for a message of an earlier connection is skipped (its packet id may be reused; the broker redelivers it, and
  a repeated sample changes nothing).
* Reconnection: each client reconnects with capped exponential backoff (reconnect_min_s doubling up to
  reconnect_max_s). CONNACK and SUBACK reason codes are checked: a refused connect is reported to
  `on_connect_failed` and never marks us connected; a refused subscription sets `fatal` (the daemon stops with
  that message). `connected` is True while both clients are connected and the broker has acknowledged every
  subscription of the subscriber's current connection (SUBACK): before that, telemetry published by others is
  not yet routed to us, so a publisher that waits for `connected` loses nothing. `connects` counts successful
  connections of both.
* Publishing: `publish(topic, payload, retain, track)` (QoS 1) hands the message to the publisher (or holds it
  while the send quota is used up), which keeps messages while disconnected and sends them after reconnect; the
  queue (handed to paho + held) is bounded by `max_queued`. On overflow `publish` returns False and
  `on_overflow` is called: never a silent drop. Tracked publishes (sent or held) stay in `unacked()` until the
  broker acknowledges them, so the daemon's state snapshot can carry them across a crash. A PUBACK with a failure
  reason (an ACL without the topic: 0x87, a quota) ends the publish too, reported to `on_refused` with the reason.
  Publishes queued before a CONNACK whose Maximum Packet Size they exceed are taken back (`take_too_large`).
  `send_quota` is the quota in force.
* Reads: both clients' sockets are wrapped in `_ReadAhead` (paho's `_create_socket`, the hook paho itself uses for
  its websocket transport): one kernel read serves many packets, where paho asks for a packet's header one byte
  at a time. A test fails if a paho release stops calling the hook. A QoS 1 PUBLISH without properties and a
  PUBACK that only says success are decoded by `_Client` without the Properties and ReasonCode objects paho
  builds for each (the rest by paho); a test checks which decoder took which packet.
* The last will (retained, on the publisher) is set from `will`; `on_connection_change(up)` hears each change of
  `connected`, in order (the daemon publishes its retained status "online" when it goes up). `stop(final)`
  publishes `final`, waits up to `timeout` for the queue to drain, disconnects both clients cleanly (no last will)
  and stops their threads.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Literal, NamedTuple
from urllib.parse import urlparse

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from scada_tcn.runtime.daemon_config import BrokerCfg

__all__ = ["Message", "MqttLink", "Publish", "Retained", "read_retained"]

log = logging.getLogger("scada.runtime.mqtt")
_RCVBUF = 256 * 1024  # the subscriber's socket receive buffer: what the broker can push at a paused reader
_DRAIN_READS = 100_000  # a safety bound on the reads of one drain (each reads at least one packet)
_READ_BURST = 256  # packets read per select round while reads are allowed
_READ_AHEAD = 65_536  # bytes asked of the kernel per socket read (paho asks for 1 byte at a time in headers)


class _ReadAhead:
    """A connected socket whose reads go through a read-ahead buffer.

    paho reads each packet's fixed header one byte per `recv` (3-4 system calls per packet, and our read burst
    checked readiness with a `select` per packet). Here one `recv` takes what the kernel holds (up to
    `_READ_AHEAD` bytes) and the following reads are served from it; `pending()` counts what is buffered (plus
    what a TLS layer has decrypted), which paho's loop and `_has_data` already consult, as they do for TLS
    sockets, so buffered bytes are never left waiting for the socket to turn readable. Reads keep the socket's
    semantics: at most n bytes, b"" at end of stream once the buffer is empty, BlockingIOError (or the TLS
    layer's want-read) when nothing is there. Everything else is the wrapped socket's."""

    __slots__ = ("_sock", "_buf", "_pos", "_decrypted", "send", "fileno")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0
        self._decrypted = getattr(sock, "pending", None)  # a TLS socket's count of decrypted bytes
        self.send = sock.send  # the hot calls skip `__getattr__`
        self.fileno = sock.fileno

    def recv(self, n: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            buf = self._sock.recv(max(n, _READ_AHEAD))
            if len(buf) <= n:
                self._buf, self._pos = b"", 0
                return buf
            pos = 0
            self._buf = buf
        end = min(pos + n, len(buf))
        self._pos = end
        return buf[pos:end]

    def pending(self) -> int:
        return len(self._buf) - self._pos + (self._decrypted() if self._decrypted is not None else 0)

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


def _has_data(sock: _ReadAhead) -> bool:
    """The socket can be read now: bytes already buffered (or decrypted), or readable without blocking."""
    return sock.pending() > 0 or bool(select.select([sock], [], [], 0.0)[0])


_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)  # shared by every plain PUBACK's callback (never mutated)
_NO_PUBACK_PROPERTIES = Properties(PacketTypes.PUBACK)


_PAHO_METHODS = ("_create_socket", "_handle_publish", "_handle_pubackcomp", "_handle_on_message", "_do_on_publish",
                 "_send_puback", "_check_keepalive")  # fmt: skip
_PAHO_FIELDS = ("_in_packet", "_protocol", "_manual_ack", "_out_messages", "_out_message_mutex", "_ping_t",
                "_msgtime_mutex", "_last_bytes_received")  # fmt: skip
PAHO_TESTED = "paho-mqtt>=2.0,<2.3"  # the releases whose internals `_Client` and `MqttLink` were checked against


def check_paho(client: paho.Client) -> None:
    """Refuse, at start-up, a paho-mqtt whose internals differ from those `_Client` and `MqttLink` build on (a
    release that renamed one would otherwise fail inside paho's network thread, or skip the lean decoders)."""
    missing = [n for n in _PAHO_METHODS if not callable(getattr(paho.Client, n, None))]  # `_Client` overrides some
    missing += [n for n in _PAHO_FIELDS if not hasattr(client, n)]
    missing += [] if callable(getattr(paho, "time_func", None)) else ["time_func"]
    if missing:
        from importlib.metadata import version

        raise RuntimeError(
            f"paho-mqtt {version('paho-mqtt')} lacks {missing}, which scada_tcn.runtime.mqtt builds on; install a "
            f"tested release: pip install '{PAHO_TESTED}'"
        )


class _Client(paho.Client):
    """paho's client with its socket behind `_ReadAhead` (paho wraps websocket transports the same way), and lean
    decoders for the two packets that every turbine-step brings: a QoS 1 MQTT v5 PUBLISH without properties
    (telemetry) and a PUBACK that only says success. paho builds a Properties object (and, for a PUBACK, a
    ReasonCode) for each, which cost a third of its time per packet; these take the same fields straight from the
    bytes and hand on exactly what paho would. Any other packet goes through paho's own decoder. Both use paho 2.x
    internals (`_in_packet`, `_handle_on_message`, `_do_on_publish`, the same in 2.0-2.2):
    tests/test_mqtt_flow_control.py fails if a release changes them."""

    reads_held: Callable[[], bool] | None = None  # the subscriber's: True while flow control holds its reads back

    def _create_socket(self) -> _ReadAhead:  # type: ignore[override]
        return _ReadAhead(super()._create_socket())

    def _check_keepalive(self) -> None:
        """paho's keepalive, except that an unanswered ping does not end the connection while `reads_held()`.
        Mosquitto queues a PINGRESP behind every message it has in flight to us (seen: the pings of a 100,000-message
        backlog answered 34 s late, after the backlog), and paho gives up once a ping is outstanding and no packet
        was read for a keepalive: it cannot tell a dead broker from reads we hold back ourselves. Pings still go
        out every keepalive (the broker sees us alive), and the check is paho's again as soon as reads resume,
        within the seconds the daemon takes to work down `queues.inbound`."""
        if self._ping_t and self.reads_held is not None and self.reads_held():
            with self._msgtime_mutex:
                self._last_bytes_received = paho.time_func()
        super()._check_keepalive()

    def _handle_publish(self) -> paho.MQTTErrorCode:
        header, packet = self._in_packet["command"], self._in_packet["packet"]
        if header & 0x06 != 0x02 or self._protocol != paho.MQTTv5 or len(packet) < 5:  # not QoS 1 v5
            return super()._handle_publish()
        end = 2 + int.from_bytes(packet[:2], "big")  # after the topic
        if end == 2 or len(packet) < end + 3 or packet[end + 2] != 0:  # a topic alias, truncated, or properties
            return super()._handle_publish()
        message = paho.MQTTMessage(mid=int.from_bytes(packet[end : end + 2], "big"), topic=bytes(packet[2:end]))
        message.dup, message.qos, message.retain = bool(header & 0x08), 1, bool(header & 0x01)
        message.payload = bytes(packet[end + 3 :])
        message.timestamp = paho.time_func()
        self._handle_on_message(message)
        return paho.MQTTErrorCode.MQTT_ERR_SUCCESS if self._manual_ack else self._send_puback(message.mid)

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> paho.MQTTErrorCode:
        packet = self._in_packet["packet"]
        plain = len(packet) == 2 or (len(packet) == 3 and packet[2] == 0)  # no reason code, or 0 = success
        if cmd != "PUBACK" or not plain or self._protocol != paho.MQTTv5:
            return super()._handle_pubackcomp(cmd)
        mid = int.from_bytes(packet[:2], "big")
        with self._out_message_mutex:
            if mid in self._out_messages:  # paho informs once per message
                return self._do_on_publish(mid, _PUBACK_SUCCESS, _NO_PUBACK_PROPERTIES)
        return paho.MQTTErrorCode.MQTT_ERR_SUCCESS


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
    """An outgoing message; everything the link publishes is QoS 1 (at least once)."""

    topic: str
    payload: bytes
    retain: bool = False


def _publish_packet_size(topic: str, payload: bytes) -> int:
    """Bytes of a QoS 1 MQTT v5 PUBLISH packet as paho writes it: fixed header (1 + remaining length), topic
    (2 + UTF-8), packet id (2), properties length (1, none set), payload."""
    remaining = 2 + len(topic.encode()) + 2 + 1 + len(payload)
    return 1 + (1 if remaining < 128 else 2 if remaining < 16_384 else 3 if remaining < 2_097_152 else 4) + remaining


def _noop(*_: object) -> None:
    return None


def _address(broker: BrokerCfg) -> tuple[str, int, bool]:
    """(host, port, TLS) of `broker.url`; ValueError for a URL that is not mqtt:// or mqtts://host[:port]."""
    url = urlparse(broker.url)
    if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
        raise ValueError(f"MqttLink: broker url must be mqtt:// or mqtts://host:port, got {broker.url!r}")
    return url.hostname, url.port or (8883 if url.scheme == "mqtts" else 1883), url.scheme == "mqtts"


def _authenticate(c: paho.Client, b: BrokerCfg, tls: bool) -> None:
    """The broker's credentials and, for mqtts://, its TLS settings, on a client not yet connected."""
    if b.username:
        password = b.password
        if b.password_file is not None:
            password = Path(b.password_file).read_text(encoding="utf-8").splitlines()[0]
        c.username_pw_set(b.username, password)
    if tls:
        for f in (b.tls.ca_file, b.tls.cert_file, b.tls.key_file):
            if f is not None and not Path(f).is_file():
                raise ValueError(f"broker.tls: file {f} does not exist")
        c.tls_set(ca_certs=b.tls.ca_file, certfile=b.tls.cert_file, keyfile=b.tls.key_file, cert_reqs=ssl.CERT_REQUIRED)
        c.tls_insecure_set(b.tls.insecure)


class Retained(NamedTuple):
    """What `read_retained` found: the retained payloads by topic (deleted ones, empty, left out), why the read
    is incomplete (None when the broker confirmed it had sent them all), and whether the broker was reached."""

    payloads: dict[str, bytes]
    problem: str | None
    reached: bool = True


def read_retained(broker: BrokerCfg, client_id: str, topic_filter: str, marker_topic: str,
                  timeout_s: float) -> Retained:  # fmt: skip
    """The retained messages the broker holds on `topic_filter` now, on a connection of their own (clean start,
    no session left behind). MQTT marks no end of the retained messages a subscription brings, so once the broker
    acknowledged the subscriptions this publishes a nonce (QoS 1, not retained) on `marker_topic`, which it also
    subscribed: the broker queues that after the retained messages it queued at the subscription, on the same
    connection, so its arrival means all of them arrived. `problem` says why a read ended without it (the broker
    unreachable, a refused connection or subscription, the marker refused by the ACL, no answer within
    `timeout_s`)."""
    host, port, tls = _address(broker)
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    _authenticate(c, broker, tls)
    nonce = uuid.uuid4().hex.encode()
    found: dict[str, bytes] = {}
    problems: list[str] = []
    done = threading.Event()

    def fail(problem: str) -> None:
        problems.append(problem)
        done.set()

    def on_connect(client: paho.Client, userdata: object, flags: object, reason_code: ReasonCode, _: object) -> None:
        if reason_code.is_failure:
            return fail(f"the broker refused the connection: {reason_code}")
        retained = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE)
        client.subscribe([(topic_filter, retained), (marker_topic, SubscribeOptions(qos=1))])

    def on_subscribe(client: paho.Client, userdata: object, mid: int, codes: list[ReasonCode], props: object) -> None:
        bad = [f"{f}: {rc}" for f, rc in zip((topic_filter, marker_topic), codes) if rc.is_failure]
        if bad:
            return fail(f"the broker refused the subscriptions {bad} (its ACL must let this user read them)")
        client.publish(marker_topic, nonce, qos=1)

    def on_publish(client: paho.Client, userdata: object, mid: int, reason_code: ReasonCode, props: object) -> None:
        if reason_code.is_failure:
            fail(
                f"the broker refused the publish on {marker_topic}: {reason_code} (its ACL must let this user write it)"
            )

    def on_message(client: paho.Client, userdata: object, m: paho.MQTTMessage) -> None:
        if m.topic == marker_topic:
            if m.payload == nonce:
                done.set()
        elif m.retain and m.payload:
            found[m.topic] = bytes(m.payload)

    def on_disconnect(client: paho.Client, userdata: object, flags: object, reason_code: ReasonCode, _: object) -> None:
        if not done.is_set():  # the broker closed it (an ACL refusal may close it without a PUBACK)
            fail(
                f"the broker closed the connection ({reason_code}) before the read ended (Mosquitto does when "
                f"its ACL refuses the publish on {marker_topic})"
            )

    c.on_connect, c.on_subscribe, c.on_publish, c.on_message = on_connect, on_subscribe, on_publish, on_message
    c.on_disconnect = on_disconnect
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    try:
        c.connect(host, port, keepalive=broker.keepalive_s, clean_start=True, properties=props)
    except OSError as e:
        return Retained({}, f"the broker at {host}:{port} is unreachable: {e}", reached=False)
    end = time.monotonic() + timeout_s
    try:
        while not done.is_set():  # this thread runs the client's network loop: no thread to start and join
            if time.monotonic() >= end:
                problems.append(f"no answer from {host}:{port} within {timeout_s:g} s")
                break
            if c.loop(timeout=0.05) not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_AGAIN) and not done.is_set():
                problems.append(f"the connection to {host}:{port} was lost")
                break
    finally:
        c.disconnect()
    return Retained(found, problems[0] if problems else None)


class MqttLink:
    """A telemetry subscriber and a publisher, MQTT v5; see the module docstring."""

    def __init__(
        self,
        broker: BrokerCfg,
        client_id: str,
        handlers: dict[str, Callable[[Message], None]],
        will: Publish,
        receive_maximum: int,
        max_queued: int,
        on_connection_change: Callable[[bool], None] = _noop,
        on_connect_failed: Callable[[str], None] = _noop,
        on_overflow: Callable[[Publish], None] = _noop,
        on_unrouted: Callable[[Message], None] = _noop,
        may_read: Callable[[], bool] = lambda: True,
        on_refused: Callable[[Publish, str], None] = lambda p, reason: None,
    ) -> None:
        self.host, self.port, self.tls = _address(broker)
        self.broker = broker
        self.client_id = client_id
        self.handlers = dict(handlers)
        self.will = will
        self._on_change = on_connection_change
        self._on_connect_failed = on_connect_failed
        self._on_overflow = on_overflow
        self._on_refused = on_refused
        self._too_large: list[tuple[Publish, bool]] = []  # taken back over the Maximum Packet Size, unclaimed
        self._on_unrouted = on_unrouted
        self._may_read = may_read
        self.drain_messages = int(receive_maximum)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._woken = False  # a wake byte is pending on the pair
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.paused_reads = 0  # subscriber loop iterations that did not read: the daemon's queue was full
        self.received = 0  # telemetry messages read from the broker
        self._lock = threading.Lock()
        self._change_lock = threading.Lock()  # connection changes and their callbacks, one at a time (`_set`)
        self._published = 0  # QoS 1 messages handed to the publisher
        self._acked = 0  # ... and acknowledged by the broker
        # both clients' connections, and the broker's acknowledgement of the subscriber's current subscriptions
        self._up = {"sub": False, "pub": False, "subscribed": False}
        self._generation = 0  # subscriber connections so far
        self._pub_connects = 0
        self._inflight: dict[int, tuple[Publish, bool]] = {}  # QoS 1 publishes by mid (publish order), tracked?
        self._early: set[int] = set()  # PUBACKs that beat the registration of their publish
        self._recalled: set[int] = set()  # publishes taken back from paho before their registration (`_take_back`)
        self._max_queued = int(max_queued)
        self._quota = 65_535  # the broker's Receive Maximum (MQTT v5 default until a CONNACK says otherwise)
        self._handed = 0  # QoS 1 publishes handed to paho (the rest of `_published` is held)
        self._held: deque[tuple[Publish, bool]] = deque()  # QoS 1 publishes beyond the quota, in publish order
        self._max_packet: int | None = None  # the broker's Maximum Packet Size (None: not limited)
        self.fatal: str | None = None
        self._sub = self._client(client_id, receive_maximum, subscriber=True)
        self._pub = self._client(f"{client_id}-pub", receive_maximum, subscriber=False)

    def _client(self, client_id: str, receive_maximum: int, subscriber: bool) -> paho.Client:
        c = _Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5,
                        manual_ack=subscriber)  # fmt: skip
        check_paho(c)
        c.max_queued_messages_set(0)  # what waits is bounded by `publish` (max_queued)
        c.max_inflight_messages_set(0)  # the publisher's window is our send quota (flow control, point 3)
        c.reconnect_delay_set(self.broker.reconnect_min_s, self.broker.reconnect_max_s)
        _authenticate(c, self.broker, self.tls)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(self.broker.session_expiry_s)
        c.on_disconnect = self._handle_disconnect
        if subscriber:
            props.ReceiveMaximum = int(receive_maximum)
            c.on_connect = self._handle_sub_connect
            c.on_subscribe = self._handle_subscribe
            c.on_message = self._handle_unrouted
            c.on_socket_open = lambda client, userdata, sock: self._tune(sock)
            c.reads_held = lambda: not self._may_read()
            # acks from the processing thread only queue their packets and wake our network loop, which alone
            # writes: paho's writer is not safe against a concurrent partial write of another packet
            c.on_socket_register_write = lambda client, userdata, sock: self._wake()
            for filt, handler in self.handlers.items():
                c.message_callback_add(filt, self._route(handler))
        else:
            c.will_set(self.will.topic, self.will.payload, qos=1, retain=True)
            c.on_connect = self._handle_pub_connect
            c.on_publish = self._handle_publish
        c.user_data_set({"props": props, "role": "sub" if subscriber else "pub"})
        return c

    # -------------------------------------------------------------------------------------------- callbacks
    def _message(self, m: paho.MQTTMessage) -> Message:
        self.received += 1
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

    def _connected_as(self, role: str, reason_code: object, flags: object) -> bool:
        if getattr(reason_code, "is_failure", False):
            log.error("broker refused the connection", extra={"reason": str(reason_code), "host": self.host,
                                                              "client": role})  # fmt: skip
            self._on_connect_failed(str(reason_code))
            return False
        log.info("connected", extra={"host": self.host, "port": self.port, "client": role,
                                     "session_present": bool(getattr(flags, "session_present", False))})  # fmt: skip
        return True

    def _set(self, **flags: bool) -> None:
        """Update the connection flags of `_up` and report a change of `connected` to `on_connection_change`, in
        the order of the changes: both clients' threads set flags, and a callback delivered after a later one would
        leave its listener with the wrong state (`_change_lock`; the callback may publish, which takes `_lock`)."""
        with self._change_lock:
            with self._lock:
                was = self.connected
                self._up.update(flags)
                now = self.connected
            if now != was:
                self._on_change(now)

    def _handle_sub_connect(self, client: paho.Client, userdata: object, flags, reason_code, properties) -> None:
        with self._lock:
            self._generation += 1
        if not self._connected_as("sub", reason_code, flags):
            return
        self._set(sub=True, subscribed=not self.handlers)  # nothing to subscribe: ready once connected
        opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE)
        if self.handlers:
            client.subscribe([(f, opts) for f in self.handlers])

    def _handle_pub_connect(self, client: paho.Client, userdata: object, flags, reason_code, properties) -> None:
        if not self._connected_as("pub", reason_code, flags):
            return
        self._pub_connects += 1
        quota = int(getattr(properties, "ReceiveMaximum", 65_535))
        max_packet = getattr(properties, "MaximumPacketSize", None)
        with self._lock:
            self._quota = quota
            self._max_packet = None if max_packet is None else int(max_packet)
        log.info("send quota", extra={"receive_maximum": quota, "maximum_packet_size": max_packet})
        # nothing held is released here: paho resends the unacknowledged publishes after this callback, and they
        # must go first (MQTT v5 4.6: original order); while anything is held the quota is in flight, so their
        # PUBACKs release the rest. Beyond a quota smaller than before, they are taken back first (4.9)
        self._take_back(client, quota)
        self._take_back_oversized(client)
        self._set(pub=True)  # last: what `on_connection_change` publishes goes after the resends

    def _handle_subscribe(self, client: paho.Client, userdata: object, mid, reason_codes, properties) -> None:
        bad = [(f, str(rc)) for f, rc in zip(self.handlers, reason_codes) if rc.is_failure]
        if bad:
            self.fatal = f"broker refused subscriptions {bad}; check the broker ACL for this user"
            log.error("subscription refused", extra={"refused": bad})
            return
        self._set(subscribed=True)

    def _handle_disconnect(self, client: paho.Client, userdata: dict, flags, reason_code, properties) -> None:
        role = userdata["role"]
        level = logging.INFO if reason_code == 0 else logging.WARNING
        log.log(level, "disconnected", extra={"reason": str(reason_code), "client": role})
        self._set(**({"sub": False, "subscribed": False} if role == "sub" else {"pub": False}))

    def _handle_publish(self, client: paho.Client, userdata: object, mid, reason_code, properties) -> None:
        with self._lock:
            self._acked += 1
            entry = self._inflight.pop(mid, None)
            if entry is None:
                self._early.add(mid)
        if reason_code.is_failure:
            topic = None if entry is None else entry[0].topic
            log.error("broker refused a publish", extra={"mid": mid, "reason": str(reason_code), "topic": topic})
            if entry is not None and entry[1]:
                self._on_refused(entry[0], str(reason_code))
        self._release()

    def _take_back_oversized(self, c: paho.Client) -> None:
        """The broker's Maximum Packet Size, known from this CONNACK, is below publishes queued before it (a
        restart publishes its replay before the first CONNACK; a broker may come back with a smaller limit): paho
        would send them, and the broker close the connection at every resend. They leave the queue for
        `take_too_large` (the daemon splits a batch of score records to fit, and counts anything else as dropped).
        A publish paho holds that is not registered yet (`_hand` running) stays: the next CONNACK takes it back."""
        if self._max_packet is None:
            return
        with c._out_message_mutex:  # paho's resend after this callback takes the same lock
            with self._lock:
                big = [mid for mid, m in c._out_messages.items()
                       if m.qos == 1 and mid in self._inflight and not self.fits(m.topic, m.payload)]  # fmt: skip
                for mid in big:
                    del c._out_messages[mid]
                taken = [self._inflight.pop(mid) for mid in big]
                kept = deque((p, t) for p, t in self._held if self.fits(p.topic, p.payload))
                taken += [(p, t) for p, t in self._held if not self.fits(p.topic, p.payload)]
                self._held = kept
                self._handed += len(taken) - len(big)  # the held ones count as handed, and every one as acked:
                self._acked += len(taken)  # out of the queue, the in-flight count down by the handed ones only
                self._too_large += taken
                idle = self._handed == self._acked
        if taken:
            log.warning("publishes queued before the broker said its Maximum Packet Size are over it: taken back",
                        extra={"maximum_packet_size": self._max_packet, "taken": len(taken)})  # fmt: skip
        if taken and idle:  # nothing in flight whose PUBACK would release the held ones
            self._release()

    def _take_back(self, c: paho.Client, quota: int) -> None:
        """The broker came back with a Receive Maximum below the publishes paho holds unacknowledged: paho would
        resend every one of them after this callback (it resets them all to be sent on reconnect, whatever its own
        in-flight limit). Those beyond the quota (the newest) are taken out of paho and put back at the front of
        the held queue, in order: at most `quota` are resent now, the rest follow as PUBACKs come back (with new
        packet ids; for QoS 1 a resend is a new delivery either way). paho 2.x keeps them in `_out_messages`
        under `_out_message_mutex` (tests/test_mqtt_flow_control.py fails if that changes)."""
        with c._out_message_mutex:  # paho's resend after this callback takes the same lock
            back = [mid for mid, m in c._out_messages.items() if m.qos == 1][quota:]
            if not back:
                return
            for mid in back:
                del c._out_messages[mid]
            with self._lock:
                self._recalled.update(mid for mid in back if mid not in self._inflight)  # `_hand` is registering it
                self._held.extendleft(reversed([self._inflight.pop(mid) for mid in back if mid in self._inflight]))
                self._handed -= len(back)
        log.warning("the broker's Receive Maximum is below the publishes awaiting its acknowledgement: the rest wait",
                    extra={"receive_maximum": quota, "waiting": len(back)})  # fmt: skip

    def _release(self) -> None:
        """Hand held publishes to paho while the send quota allows (on paho's thread, after an ack); one over the
        broker's Maximum Packet Size goes to `take_too_large` instead."""
        while True:
            with self._lock:
                if not self._held or self._handed - self._acked >= self._quota:
                    return
                p, track = self._held.popleft()
                self._handed += 1
                if not self.fits(p.topic, p.payload):
                    self._acked += 1
                    self._too_large.append((p, track))
                    continue
            self._hand(p, track)

    def _hand(self, p: Publish, track: bool) -> None:
        """Give one counted QoS 1 publish to paho and register it until its PUBACK (never under our lock: paho
        calls on_publish holding its own message mutex)."""
        info = self._pub.publish(p.topic, p.payload, qos=1, retain=p.retain)
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
            elif info.mid in self._recalled:  # a reconnect took it back first: it waits behind the others taken
                self._recalled.discard(info.mid)
                self._held.append((p, track))
            else:
                self._inflight[info.mid] = (p, track)

    # ------------------------------------------------------------------------------------------------ API
    @property
    def connected(self) -> bool:
        """Both clients connected and the subscriptions acknowledged: telemetry sent from now on reaches us."""
        return all(self._up.values())

    @property
    def connects(self) -> int:
        """Successful connections of both clients so far (2 + reconnects)."""
        return self._generation + self._pub_connects

    @property
    def queue_depth(self) -> int:
        with self._lock:
            return max(self._published - self._acked, 0)

    def unacked(self) -> list[Publish]:
        """The tracked publishes the broker has not acknowledged yet (sent, held, or taken back over the broker's
        Maximum Packet Size and not claimed yet: `take_too_large`), in publish order."""
        with self._lock:
            return [p for p, tracked in (*self._inflight.values(), *self._held, *self._too_large) if tracked]

    def take_too_large(self) -> list[Publish]:
        """Claim the publishes taken back over the broker's Maximum Packet Size (`_take_back_oversized`), in order:
        they stay in `unacked()` until claimed, so a state snapshot taken meanwhile keeps them."""
        with self._lock:
            taken, self._too_large = self._too_large, []
        return [p for p, _ in taken]

    def fits(self, topic: str, payload: bytes) -> bool:
        """The PUBLISH packet of `payload` on `topic` is within the broker's Maximum Packet Size."""
        limit = self._max_packet
        return limit is None or _publish_packet_size(topic, payload) <= limit

    def max_payload(self, topic: str) -> int | None:
        """The largest payload that fits on `topic` (None: not limited)."""
        limit = self._max_packet
        return None if limit is None else limit - _publish_packet_size(topic, b"") - 3  # the length may grow 3 bytes

    @property
    def send_quota(self) -> int:
        """QoS 1 publishes that may await their PUBACK at once: the broker's Receive Maximum."""
        return self._quota

    def start(self) -> None:
        """Connect both clients in the background (retrying with backoff) and start their network threads."""
        for c in (self._sub, self._pub):
            c.connect_async(self.host, self.port, keepalive=self.broker.keepalive_s, clean_start=False,
                            properties=c.user_data_get()["props"])  # fmt: skip
        self._pub.loop_start()
        self._thread = threading.Thread(target=self._sub_loop, name=f"mqtt-{self.client_id}", daemon=True)
        self._thread.start()

    def publish(self, topic: str, payload: bytes, retain: bool = False, track: bool = False) -> bool:
        """Queue one QoS 1 message (sent now when the send quota allows, later as PUBACKs come back, or after a
        reconnect); False when the queue is full (and on_overflow) or the packet would exceed the broker's Maximum
        Packet Size (`fits` is False)."""
        p = Publish(topic, payload, retain)
        if not self.fits(topic, payload):
            return False
        with self._lock:
            if self._published - self._acked >= self._max_queued:
                full = True
            else:
                full = False
                self._published += 1
                hand = not self._held and self._handed - self._acked < self._quota
                if hand:
                    self._handed += 1
                else:
                    self._held.append((p, track))
        if full:
            self._on_overflow(p)
            return False
        if hand:
            self._hand(p, track)
        return True

    def ack(self, msg: Message) -> None:
        """Acknowledge a processed QoS 1 message (skipped when it came on an earlier connection)."""
        if msg.qos > 0 and msg.generation == self._generation and self._up["sub"]:
            self._sub.ack(msg.mid, msg.qos)

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
            self.publish(p.topic, p.payload, p.retain)
        drained = self.wait_drained(timeout) if self._up["pub"] else False
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sub.on_socket_register_write = None  # no network thread left: paho writes the DISCONNECT itself
        self._sub.disconnect()
        self._pub.disconnect()
        self._pub.loop_stop()
        for s in (self._wake_r, self._wake_w):
            s.close()
        return drained

    # ------------------------------------------------------------------------------- the subscriber's loop
    def _wake(self) -> None:
        """Wake the subscriber's loop (one byte on the wake pair, unless a wake is already pending: the loop
        clears `_woken` when it reads the pair, before it writes what is queued)."""
        if self._woken:
            return
        self._woken = True
        try:
            self._wake_w.send(b"\0")
        except OSError:  # already woken (the pair's buffer is full) or closed at stop
            pass

    @staticmethod
    def _tune(sock: socket.socket) -> None:
        """A small receive buffer, so that paused reads push back on the broker early (see flow control)."""
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        except (OSError, AttributeError):  # a socket type without the option: the kernel default stays
            pass

    def _sub_loop(self) -> None:
        """The subscriber's network events: reads gated by `may_read`, writes and keepalive always."""
        c = self._sub
        delay = float(self.broker.reconnect_min_s)
        drain_every = max(self.broker.keepalive_s / 4.0, 0.5)
        next_drain = 0.0
        while not self._stopping.is_set():
            sock = c.socket()
            if sock is None:
                try:
                    c.reconnect()
                    delay = float(self.broker.reconnect_min_s)
                except OSError as e:
                    log.warning("broker unreachable", extra={"host": self.host, "port": self.port, "error": str(e),
                                                             "retry_in_s": delay})  # fmt: skip
                    self._stopping.wait(delay)
                    delay = min(delay * 2, float(self.broker.reconnect_max_s))
                continue
            try:
                rc = self._sub_events(c, sock, next_drain)
                if rc == "drained":
                    next_drain, rc = time.monotonic() + drain_every, paho.MQTT_ERR_SUCCESS
            except (OSError, ValueError) as e:  # the socket went away under select
                log.warning("network loop error", extra={"error": str(e)})
                rc = paho.MQTT_ERR_CONN_LOST
            if rc != paho.MQTT_ERR_SUCCESS and not self._stopping.is_set():
                if c.socket() is not None:
                    c.disconnect()  # paho closes the socket; the next iteration reconnects
                self._stopping.wait(delay)
                delay = min(delay * 2, float(self.broker.reconnect_max_s))

    def _read_burst(self, c: paho.Client, sock: _ReadAhead) -> int:
        """Read packets while the socket has data and reads are allowed, at most `_READ_BURST`: paho reads one
        packet per `loop_read` on a client that only subscribes, and a whole network round per packet costs more
        than the packet. The inbound bound holds: the broker sends at most Receive Maximum unacknowledged messages."""
        rc = c.loop_read()
        for _ in range(_READ_BURST - 1):
            if rc != paho.MQTT_ERR_SUCCESS or c.socket() is None or not self._may_read() or not _has_data(sock):
                break
            rc = c.loop_read()
        return rc

    def _sub_events(self, c: paho.Client, sock: _ReadAhead, next_drain: float) -> int | str:
        """One round of the subscriber's network events; "drained" when it read while paused."""
        drained = False
        paused = not self._may_read()
        pending = sock.pending()
        wlist = [sock] if c.want_write() else []
        if paused:
            self.paused_reads += 1
            if time.monotonic() >= next_drain:  # what the socket holds, so that the PINGRESP is read in time
                drained = True
                rc = self._drain(c, sock)
                if rc != paho.MQTT_ERR_SUCCESS:
                    return rc
            r, w, _ = select.select([self._wake_r], wlist, [], 0.02)
            readable = False
        else:
            r, w, _ = select.select([sock, self._wake_r], wlist, [], 0.0 if pending else 0.05)
            readable = sock in r or pending > 0
        if self._wake_r in r:
            self._wake_r.recv(65536)
            self._woken = False  # after the read, before the writes below: a packet queued later wakes us again
        rc = self._read_burst(c, sock) if readable else paho.MQTT_ERR_SUCCESS
        if rc == paho.MQTT_ERR_SUCCESS and (w or c.want_write()):
            rc = c.loop_write()
        if rc == paho.MQTT_ERR_SUCCESS:
            rc = c.loop_misc()
        return "drained" if drained and rc == paho.MQTT_ERR_SUCCESS else rc

    def _drain(self, c: paho.Client, sock: _ReadAhead) -> int:
        """While paused: read what the socket holds, at most `drain_messages` messages (a broker honouring Receive
        Maximum has no more in flight, so a PINGRESP behind them is read)."""
        start = self.received
        for _ in range(_DRAIN_READS):
            if not _has_data(sock) or self.received - start >= self.drain_messages:
                return paho.MQTT_ERR_SUCCESS
            rc = c.loop_read()
            if rc != paho.MQTT_ERR_SUCCESS or c.socket() is None:
                return rc
        return paho.MQTT_ERR_SUCCESS
