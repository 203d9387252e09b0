"""`scada-runtime decode`: what the daemon reads in one message, or in a capture of many, without a broker.

Contract
--------
* `explain(ingress, topic, payload, now_ns)`: the message through the daemon's own routing and decoders
  (`runtime.ingress`): the setting that routes it, each sample (turbine, stamp, channel -> value, null where the
  source says it has no value, the failed reads) and each refusal with its reason, detail and place. A topic no
  subscription takes is refused (`bad_topic`), as the daemon's link does not route it.
* `survey(ingress, messages)`: `explain` over captured messages in order, summed up.
* `captured(path, now)`: the messages of a capture as `mosquitto_sub -F %j` prints them (or with payloads in hex),
  each with the clock its stamps are checked against.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from paho.mqtt.client import topic_matches_sub

from scada_tcn.runtime.hold import is_unread
from scada_tcn.runtime.ingress import Ingress
from scada_tcn.runtime.records import iso_utc
from scada_tcn.runtime.telemetry import Rejection, Sample, parse_timestamp_ns

__all__ = ["captured", "explain", "survey"]


def explain(ingress: Ingress, topic: str, payload: bytes, now_ns: int) -> dict[str, Any]:
    """What the daemon would read in one message (`scada-runtime decode`): the setting that routes it, each sample
    (turbine, stamp, channel -> value, null for a value the source says it lacks, and the failed reads), and each
    refusal with its reason, detail and place. A topic no subscription takes is refused (`bad_topic`)."""
    if not any(topic_matches_sub(f, topic) for f in ingress.filters):
        why = f"no subscription of this config takes this topic; they are {ingress.filters}"
        return {"topic": topic, "read_as": None, "samples": [], "refused": [{"reason": "bad_topic", "detail": why}]}
    res, route, _ = ingress.decode(topic, payload, now_ns)
    if isinstance(res, Rejection):
        return {"topic": topic, "read_as": route, "samples": [], "refused": [res._asdict()]}
    samples, rejected = ([res], []) if isinstance(res, Sample) else (res.samples, res.rejected)
    channels = ingress.decoder.channels
    read = [
        {"turbine": s.turbine, "ts": iso_utc(s.ts_ns),
         "values": {c: None if is_unread(x) else float(x) for c, x in zip(channels, s.values.tolist()) if x == x or
                    is_unread(x)},
         "failed": [channels[i] for i in s.failed]}
        for s in samples
    ]  # fmt: skip
    refused = [{**r._asdict(), **res.where(place)} for place, r in rejected]  # type: ignore[union-attr]
    return {"topic": topic, "read_as": route, "samples": read, "refused": refused}


def survey(ingress: Ingress, messages: Iterable[tuple[str, bytes, int]], examples: int = 5) -> dict[str, Any]:
    """`explain` over captured messages (topic, payload, the clock then), in order through one `Ingress` (a
    Sparkplug birth gives the data after it its aliases): how many were read, the samples, the turbines, the values
    each channel got (nulls included) and the channels that got none, the refusals by reason, and the first
    `examples` messages with a refusal, explained."""
    channels = ingress.decoder.channels
    n = samples = 0
    turbines: set[str] = set()
    values = dict.fromkeys(channels, 0)
    refused: Counter[str] = Counter()
    shown: list[dict[str, Any]] = []
    for topic, payload, now_ns in messages:
        got = explain(ingress, topic, payload, now_ns)
        n += 1
        samples += len(got["samples"])
        for s in got["samples"]:
            turbines.add(s["turbine"])
            for c in s["values"]:
                values[c] += 1
        refused.update(r["reason"] for r in got["refused"])
        if got["refused"] and len(shown) < examples:
            shown.append(got)
    return {"messages": n, "samples": samples, "turbines": len(turbines), "turbine_ids": sorted(turbines)[:50],
            "values_by_channel": values, "channels_without_values": [c for c in channels if not values[c]],
            "refused": dict(refused), "examples": shown}  # fmt: skip


def captured(path: Path, now: int | None = None) -> Iterator[tuple[str, bytes, int]]:
    """The messages of a capture, one JSON object a line, as `mosquitto_sub -F %j` (or `%J`) prints them: (topic,
    payload, the clock to check its stamps against: `now`, else the line's `tst`, when mosquitto_sub received it,
    else the wall clock). A line may hold its payload in hex under `hex` instead, for binary payloads (Sparkplug's,
    which `%j` writes as an empty string): `mosquitto_sub -F '{"tst":"%I","topic":"%t","hex":"%x"}'`. ValueError
    names a line that is neither."""
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                topic = doc["topic"]
                if "hex" in doc:
                    payload = bytes.fromhex(doc["hex"])
                else:  # %J prints a JSON payload as is
                    text = doc["payload"] if isinstance(doc["payload"], str) else json.dumps(doc["payload"])
                    payload = text.encode()
            except (ValueError, TypeError, KeyError) as e:
                raise ValueError(f"{path}, line {n}: not a message as `mosquitto_sub -F %j` prints it, nor one with "
                                 f"its payload in hex ({type(e).__name__}: {e})") from None  # fmt: skip
            at = now if now is not None else _received(doc["tst"], f"{path}, line {n}") if "tst" in doc else None
            yield str(topic), payload, time.time_ns() if at is None else at


def _received(tst: Any, where: str) -> int:
    """mosquitto_sub's `tst` (when it received the message, on its local clock) -> ns: epoch seconds (1.6), or
    ISO-8601 with the local offset, written `...123456+0200` (2.0) or `...123456Z+0200` (early 2.0: the 'Z' is
    spurious, the offset holds)."""
    text = re.sub(r"Z(?=[+-]\d{4}$)", "", tst) if isinstance(tst, str) else tst
    ns = parse_timestamp_ns(text)
    if isinstance(ns, str):
        raise ValueError(f"{where}: tst {str(tst)[:60]!r} is not a time mosquitto_sub writes ({ns}); give --now")
    return ns
