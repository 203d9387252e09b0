"""A retained presence message on a connection of its own: a Sparkplug 3.0 host application's STATE.

Sparkplug edge nodes configured with a primary host publish only while that host's STATE
(`spBv1.0/STATE/<host id>`, retained) says online, and store and forward what they read otherwise. `Presence`
keeps that message true for the daemon: online while the daemon takes telemetry, offline otherwise. The daemon
says which with `set(up)`; a thread of its own opens and closes the connection, so the link's network threads,
which report the changes, never wait on it.

One session, as Sparkplug 3.0 section 5 (Host Application Session Establishment) asks:
* CONNECT with clean start and a session expiry of 0; its will is the death certificate `payload(False, t)`
  (QoS 1, retained), t the UTC milliseconds at that CONNECT (`on_pre_connect`: each reconnect stamps anew);
* on the CONNACK, a subscription to the topic itself; on its SUBACK, the birth `payload(True, t)` with the
  same t (QoS 1, retained);
* a death delivered on the topic while the birth stands (another client's, or an old session's will the broker
  sent late) is answered at once with the birth again; the retained message a subscription brings predates the
  birth and is not answered;
* `set(False)` and `stop()` publish the death stamped now, wait for its PUBACK (a few seconds at most) and
  disconnect cleanly (no will). A crash leaves it to the will.
Edge nodes take a STATE only when its timestamp is not older than the last they took. So each session's stamp is
later than any used or seen before within the process (a clock set back counts on from the newest), and a
retained STATE newer than the session's stamp (a clock behind the last run's: a gateway booted before NTP)
renews the session past that stamp.
The connection's client id is `<client id>-host`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from scada_tcn.runtime.daemon_config import BrokerCfg
from scada_tcn.runtime.mqtt import _address, _authenticate, _noop

__all__ = ["Presence"]

log = logging.getLogger("scada.runtime.presence")
_DEATH_WAIT_S = 5.0  # how long a clean close waits for the broker to acknowledge the death


class Presence:
    """A retained online/offline message on `topic`, kept by a connection of its own (see the module docstring).

    `payload(online, ts_ms)` makes the message; `read(payload)` reads one as (online, ts_ms), None for anything
    else; `on_state(online)` hears each birth the broker acknowledged (True) and each end of a session (False)."""

    def __init__(
        self,
        broker: BrokerCfg,
        client_id: str,
        topic: str,
        payload: Callable[[bool, int], bytes],
        read: Callable[[bytes], tuple[bool, int] | None],
        on_state: Callable[[bool], None] = _noop,
    ) -> None:
        self.host, self.port, self.tls = _address(broker)
        self.broker, self.client_id, self.topic = broker, client_id, topic
        self._payload, self._read, self._on_state = payload, read, on_state
        self._cond = threading.Condition()
        self._want = False  # what the daemon asked for (`set`)
        self._closing = False  # `stop` was called: nothing opens again
        self._renew = False  # a retained STATE newer than the session's stamp: reopen at that stamp
        self._client: paho.Client | None = None  # the open session's client (the thread alone sets it)
        self._lock = threading.Lock()  # a birth and a close, one at a time (paho's thread and ours)
        self._ending: paho.Client | None = None  # the client being closed: it publishes no birth
        self._stamp = 0  # the UTC milliseconds of the session's CONNECT: its will's and births' timestamp
        self._floor = 0  # no stamp is older: the newest used or seen on the topic
        self._born = False  # the birth of the current connection is out (a death now asks for it again)
        self.births = 0  # births published (a session's first and each answer to a death)
        self._thread = threading.Thread(target=self._run, name=f"presence-{client_id}", daemon=True)

    def start(self) -> None:
        """Start the thread that opens and closes the connection as `set` asks."""
        self._thread.start()

    def set(self, up: bool) -> None:
        """Online (a session that publishes the birth) or offline (the death, then a clean disconnect); once
        stopping, offline whatever is asked."""
        with self._cond:
            self._want = bool(up) and not self._closing
            self._cond.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """Publish the death (when a session is open), disconnect and end the thread (waiting for it once)."""
        with self._cond:
            again, self._want, self._closing = self._closing, False, True
            self._cond.notify()
        if self._thread.is_alive() and not again:
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._want == (self._client is not None) and not self._renew and not self._closing:
                    self._cond.wait()
                want, closing, renew = self._want and not self._closing, self._closing, self._renew
                self._renew = False
            if self._client is not None and (not want or renew):
                self._close()
            if want and self._client is None:
                self._open()
            if closing and self._client is None:
                return

    def _open(self) -> None:
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5)
        c.reconnect_delay_set(self.broker.reconnect_min_s, self.broker.reconnect_max_s)
        _authenticate(c, self.broker, self.tls)
        c.on_pre_connect = self._will
        c.on_connect = self._connected
        c.on_subscribe = self._subscribed
        c.on_message = self._message
        c.on_publish = self._published
        c.on_disconnect = self._disconnected
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        c.connect_async(self.host, self.port, keepalive=self.broker.keepalive_s, clean_start=True, properties=props)
        c.loop_start()
        self._client = c

    def _close(self) -> None:
        c, self._client = self._client, None
        assert c is not None
        with self._lock:  # no birth of this client after this point: the death below is its last word
            self._ending, self._born = c, False  # (the death, delivered to us too, asks for no birth)
            stamp = self._floor = max(_now_ms(), self._stamp, self._floor)
            info = c.publish(self.topic, self._payload(False, stamp), qos=1, retain=True) if c.is_connected() else None
        if info is not None and info.rc == paho.MQTT_ERR_SUCCESS:  # else the connection went: the will goes out
            info.wait_for_publish(timeout=_DEATH_WAIT_S)
        c.disconnect()
        c.loop_stop()

    # -------------------------------------------------------------------------- paho callbacks (its thread)
    def _will(self, c: paho.Client, userdata: object) -> None:
        with self._lock:
            self._stamp = self._floor = max(_now_ms(), self._floor + 1)  # a later session: a later stamp
            self._born = False
            c.will_set(self.topic, self._payload(False, self._stamp), qos=1, retain=True)

    def _connected(self, c: paho.Client, userdata: object, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("the broker refused the presence connection", extra={"reason": str(reason_code),
                                                                          "client": self.client_id})  # fmt: skip
            return
        c.subscribe(self.topic, qos=1)

    def _subscribed(self, c: paho.Client, userdata: object, mid, reason_codes, properties) -> None:
        if any(rc.is_failure for rc in reason_codes):
            log.error("the broker refused the subscription to the presence topic (its ACL must let this user read "
                      "and write it); the birth goes out all the same", extra={"topic": self.topic})  # fmt: skip
        self._birth(c)

    def _birth(self, c: paho.Client) -> None:
        with self._lock:
            if c is self._ending:
                return
            self._born = True
            self.births += 1
            c.publish(self.topic, self._payload(True, self._stamp), qos=1, retain=True)

    def _message(self, c: paho.Client, userdata: object, m: paho.MQTTMessage) -> None:
        state = self._read(bytes(m.payload))
        if state is None:
            return
        online, ts = state
        if m.retain and ts > self._stamp:  # a STATE newer than this session (this clock is behind the last one's)
            log.warning(
                "the retained STATE is newer than this session's stamp (is the clock behind?): the session "
                "starts again at its stamp",
                extra={"topic": self.topic, "retained": ts, "stamp": self._stamp},
            )
            with self._lock:
                self._floor = max(self._floor, ts)
            with self._cond:
                self._renew = True
                self._cond.notify()
        elif self._born and not m.retain and not online:
            log.warning("a death on the presence topic while this session's birth stands: the birth goes out again",
                        extra={"topic": self.topic})  # fmt: skip
            self._birth(c)

    def _published(self, c: paho.Client, userdata: object, mid, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("the broker refused the presence message (its ACL must let this user write the topic)",
                      extra={"topic": self.topic, "reason": str(reason_code)})  # fmt: skip
        elif self._born and c is not self._ending:
            self._on_state(True)

    def _disconnected(self, c: paho.Client, userdata: object, flags, reason_code, properties) -> None:
        self._born = False
        self._on_state(False)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
