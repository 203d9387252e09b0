"""The daemon as a Sparkplug 3.0 host application (`topics.sparkplug_host_id`): its STATE, through a real Mosquitto.

Sparkplug edge nodes configured with a primary host publish only while its retained STATE says online, and store
and forward otherwise. These tests read the STATE as such an edge node would: retained, QoS 1, each birth and
death stamped, a death never older than the birth before it.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import pytest

from scada_tcn.runtime.bundle import load_bundle
from scada_tcn.runtime.daemon import Daemon
from scada_tcn.runtime.daemon_config import BrokerCfg, daemon_config_from_dict, sparkplug_host
from scada_tcn.runtime.errors import ConfigError
from scada_tcn.runtime.presence import Presence
from scada_tcn.runtime.sparkplug import host_state, host_state_topic, read_state
from scada_tcn.runtime.stream import make_scorer
from tests.mosquitto import (
    SITE,
    Collector,
    DaemonProcess,
    DaemonThread,
    client,
    daemon_config,
    daemon_config_dict,
    wait_for,
)

TOPIC = host_state_topic("scada-tcn")


class StateWatch(Collector):
    """Every STATE message on TOPIC, as (online, timestamp, retained), in the order the broker sent them."""

    def __init__(self, url: str, client_id: str = "state-watch", also: list[str] | None = None):
        super().__init__(url, [TOPIC, *(also or [])], client_id=client_id)

    def states(self) -> list[tuple[bool, int, bool]]:
        with self._lock:
            docs = [(json.loads(p), r) for t, p, r in self.messages if t == TOPIC]
        assert all(set(d) == {"online", "timestamp"} for d, _ in docs), docs
        return [(d["online"], d["timestamp"], r) for d, r in docs]

    def last(self) -> tuple[bool, int] | None:
        s = self.states()
        return s[-1][:2] if s else None


def _retained(url: str) -> tuple[bool, int] | None:
    """The STATE the broker holds now, as a newly connected edge node reads it."""
    got: list[bytes] = []
    done = threading.Event()
    c = client(url, f"reader-{time.monotonic_ns()}", {
        "on_connect": lambda c, u, f, rc, p: c.subscribe([(TOPIC, 1), ("marker", 1)]),
        "on_subscribe": lambda c, u, mid, rcs, p: c.publish("marker", b"m", qos=1),
        "on_message": lambda c, u, m: done.set() if m.topic == "marker" else got.append(bytes(m.payload))})  # fmt: skip
    wait_for(done.is_set, 10, "the retained STATE")
    c.disconnect()
    c.loop_stop()
    if not got:
        return None
    d = json.loads(got[-1])
    return d["online"], d["timestamp"]


def test_state_payloads_and_the_config():
    assert host_state(True, 1700000000123) == b'{"online":true,"timestamp":1700000000123}'
    assert read_state(host_state(False, 5)) == (False, 5) and read_state(host_state(True, 7)) == (True, 7)
    for other in (
        b"",
        b"OFFLINE",
        b"\xff",
        b"[false]",
        b'{"online": 0, "timestamp": 1}',
        b"[" * 100_000,
        b"1e999999",
        b'{"online": false}',
        b'{"online": false, "timestamp": 1.5}',
        b'{"online": false, "timestamp": true}',
    ):
        assert read_state(other) is None
    cfg = daemon_config_from_dict({"gateway": "gw7", "topics": {"sparkplug_group": "farm",
                                                                "sparkplug_host_id": "scada-{gateway}"}})  # fmt: skip
    assert sparkplug_host(cfg) == "scada-gw7"
    assert sparkplug_host(daemon_config_from_dict({"topics": {"sparkplug_group": "farm"}})) is None
    refused = {
        "set topics.sparkplug_group too": {"sparkplug_host_id": "h"},
        "one topic level": {"sparkplug_group": "farm", "sparkplug_host_id": "a/b"},
        "only {site} and {gateway}": {"sparkplug_group": "farm", "sparkplug_host_id": "{turbine}"},
        "are also topics of ['status']": {"sparkplug_group": "farm", "sparkplug_host_id": "gw1",
                                          "status": "spBv1.0/STATE/{gateway}"},
    }  # fmt: skip
    for why, topics in refused.items():
        with pytest.raises(ConfigError, match=re.escape(why)):
            daemon_config_from_dict({"gateway": "gw1", "topics": topics})
    for wait, why in ((60.0, "waits after Sparkplug deaths: set topics.sparkplug_group"), (-1.0, "finite number >= 0")):
        with pytest.raises(ConfigError, match=re.escape(why)):
            daemon_config_from_dict({"ingest": {"sparkplug_history_wait_s": wait}})


def test_presence_births_answers_a_death_dies_on_request_and_leaves_its_will(broker):
    """One session: its birth; a death someone else sends is answered with the birth again (same stamp); set(False)
    publishes a death no older than the birth and disconnects cleanly (no will follows); the next session is
    stamped anew. A connection that drops without a DISCONNECT leaves the will (the session's stamp), and the
    reconnect is born again with a later one."""
    watch = StateWatch(broker.url)
    wait_for(watch.ready, 10, "watcher")
    seen: list[bool] = []
    p = Presence(BrokerCfg(url=broker.url, reconnect_min_s=1, reconnect_max_s=1), "daemon-host", TOPIC, host_state,
                 read_state, on_state=seen.append)  # fmt: skip
    p.start()
    p.set(True)
    wait_for(lambda: watch.last() is not None and seen[-1:] == [True], 10, "the birth")
    online, t1 = watch.last()
    assert online and abs(t1 - time.time() * 1000) < 10_000 and _retained(broker.url) == (True, t1)

    other = client(broker.url, "someone")
    wait_for(other.is_connected, 10, "another client")
    other.publish(TOPIC, host_state(False, t1), qos=1).wait_for_publish(10)
    wait_for(lambda: len(watch.states()) >= 3, 10, "the birth again")
    assert [s[:2] for s in watch.states()[:3]] == [(True, t1), (False, t1), (True, t1)]
    assert p.births == 2 and _retained(broker.url) == (True, t1)

    p.set(False)
    wait_for(lambda: watch.last() is not None and not watch.last()[0] and seen[-1:] == [False], 10, "the death")
    dead_at = watch.last()[1]
    assert dead_at >= t1 and _retained(broker.url) == (False, dead_at)

    time.sleep(0.01)
    p.set(True)
    wait_for(lambda: watch.last()[0], 10, "a new session's birth")
    t2 = watch.last()[1]
    assert t2 >= dead_at > 0 and t2 > t1

    before = len(watch.states())
    p._client.socket().shutdown(socket.SHUT_RDWR)  # the connection drops, no DISCONNECT: the broker sends the will
    wait_for(lambda: [s[:2] for s in watch.states()[before:]][:1] == [(False, t2)], 10, "the will")
    wait_for(lambda: watch.last()[0] and watch.last()[1] > t2, 15, "the reconnect's birth")
    assert _retained(broker.url) == watch.last()
    p.stop()  # its death is on the broker when stop returns; the watcher receives it a moment later
    wait_for(lambda: not watch.last()[0], 10, "the death at stop")
    other.disconnect()
    watch.close()


def test_the_daemon_is_online_while_it_takes_telemetry(broker, tiny_bundle, tmp_path):
    """`scada-runtime run` with topics.sparkplug_host_id: online once it takes telemetry; `kill -9` leaves the will
    (its birth's stamp); the restart is online with a later stamp; SIGTERM says offline before the daemon's own
    status does (edge nodes stop sending while it still reads). With the daemon on a thread: a broker restart
    takes the STATE offline with the link and back online with it, stamped anew, and the gauge follows."""
    cfg = daemon_config_dict(broker.url, topics={"sparkplug_group": "farm", "sparkplug_host_id": "scada-tcn"})
    watch = StateWatch(broker.url, also=["scada/runtime/+/status"])
    wait_for(watch.ready, 10, "watcher")
    d = DaemonProcess(tiny_bundle, cfg, tmp_path / "d")
    d.start()
    wait_for(lambda: watch.last() is not None and watch.last()[0], 60, "the daemon's birth")
    t1 = watch.last()[1]
    d.kill()
    wait_for(lambda: not watch.last()[0], 30, "the will")
    assert watch.last() == (False, t1) == _retained(broker.url)
    d.start()
    wait_for(lambda: watch.last()[0], 60, "the restart's birth")
    t2 = watch.last()[1]
    assert t2 > t1
    assert d.stop() == 0
    wait_for(lambda: any(json.loads(p).get("state") == "offline" for _, p in watch.of("/status")), 10, "status")
    assert watch.last()[0] is False and watch.last()[1] >= t2 and _retained(broker.url) == watch.last()
    said = [(t, json.loads(p)) for t, p, _ in watch.messages]
    death = max(i for i, (t, doc) in enumerate(said) if t == TOPIC and doc["online"] is False)
    assert said[death + 1 :] and all(t != TOPIC for t, _ in said[death + 1 :])
    assert said[-1][1]["state"] == "offline"

    bundle = load_bundle(tiny_bundle)
    runs = DaemonThread(daemon_config(broker.url, topics={"sparkplug_group": "farm", "sparkplug_host_id": "scada-tcn"}),
                        bundle, make_scorer(bundle, "window"))  # fmt: skip
    gauge = lambda: runs.daemon.metrics.value("scada_runtime_sparkplug_host_online")  # noqa: E731
    wait_for(lambda: watch.last()[0] and gauge() == 1, 30, "online")
    t3 = watch.last()[1]
    broker.stop()
    wait_for(lambda: gauge() == 0, 30, "the gauge down with the broker")
    broker.start()
    wait_for(lambda: watch.last()[0] and watch.last()[1] > t3 and gauge() == 1, 60, "a new birth after the outage")
    assert runs.stop() == 0
    wait_for(lambda: not watch.last()[0], 10, "the death at stop")
    watch.close()


def test_presence_renews_under_a_newer_retained_state_and_stays_down_after_stop(broker):
    """A retained STATE stamped a day ahead (the last run's, on a clock that was ahead, or this one behind): edge
    nodes would ignore a birth older than it, so the session starts again past its stamp. After `stop`, a late
    `set(True)` (the link reconnecting during shutdown) opens nothing."""
    ahead = int(time.time() * 1000) + 86_400_000
    other = client(broker.url, "last-run")
    wait_for(other.is_connected, 10, "another client")
    other.publish(TOPIC, host_state(False, ahead), qos=1, retain=True).wait_for_publish(10)
    other.disconnect()
    watch = StateWatch(broker.url)
    wait_for(watch.ready, 10, "watcher")
    p = Presence(BrokerCfg(url=broker.url, reconnect_min_s=1, reconnect_max_s=1), "daemon-host", TOPIC, host_state,
                 read_state)  # fmt: skip
    p.start()
    p.set(True)
    wait_for(lambda: watch.last() is not None and watch.last()[0] and watch.last()[1] >= ahead, 15, "a birth")
    assert _retained(broker.url) == watch.last() == (True, ahead + 1)  # past it: edge nodes take it
    p.stop()
    assert _retained(broker.url) == (False, ahead + 1)
    p.set(True)
    time.sleep(0.5)
    assert not p._thread.is_alive() and p._client is None and _retained(broker.url) == (False, ahead + 1)
    watch.close()


def test_the_state_is_offline_while_the_daemon_clock_is_behind_its_telemetry(broker, tiny_bundle):
    """While the wall clock is behind telemetry already taken (an RTC set back before NTP) the daemon takes no
    telemetry: the STATE says offline, so edge nodes store; once the clock catches up it is online again."""
    now = [time.time_ns()]
    bundle = load_bundle(tiny_bundle)
    cfg = daemon_config(broker.url, topics={"sparkplug_group": "farm", "sparkplug_host_id": "scada-tcn"})
    d = Daemon(cfg, bundle, make_scorer(bundle, "window"), clock=lambda: now[0])
    watch = StateWatch(broker.url)
    wait_for(watch.ready, 10, "watcher")
    d.start()
    wait_for(lambda: d.link.connected and watch.last() is not None and watch.last()[0], 30, "online")
    pub = client(broker.url, "telemetry")
    wait_for(pub.is_connected, 10, "publisher")
    doc = {"ts": now[0] / 1e9, "values": {dict(bundle.column_mapping)[bundle.spec.channels[0]]: 5.0}}
    pub.publish(f"scada/{SITE}/WT01/telemetry", json.dumps(doc).encode(), qos=1).wait_for_publish(10)
    wait_for(lambda: d.step(0.05) and d._data_ns > 0, 10, "the sample taken")
    now[0] -= 3600 * 10**9  # the clock set back an hour
    d.step(0.0)
    wait_for(lambda: not watch.last()[0], 10, "offline")
    now[0] += 3600 * 10**9
    d.step(0.0)
    wait_for(lambda: watch.last()[0], 15, "online again")
    d.request_stop()
    assert d.run_forever() == 0
    assert not watch.last()[0]
    pub.disconnect()
    watch.close()
