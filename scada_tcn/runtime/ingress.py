"""Which decoder reads a telemetry message, by its topic: the one routing of the daemon and of
`scada-runtime decode`.

Contract
--------
`Ingress(cfg, bundle)` builds the decoders a runtime.yaml asks for against the bundle's channels (a mapping that
does not fit them raises ConfigError) and `filters`, the subscriptions they need. `decode(topic, payload,
now_ns)` gives (what the message holds: a Sample, a BatchDecode or a Rejection; what its parts are called in
refusals: line, element, tag or metric) and never raises on bad input:
* `topics.telemetry_batch`: the form `ingest.batch_format` names;
* the Sparkplug group's topics (`topics.sparkplug_group`): `SparkplugDecoder`, which keeps the births;
* per-tag topics (`topics.telemetry_tag`): `TagTopicDecoder`;
* any other topic: a turbine's, in the form `ingest.telemetry_format` names (documents, or its tags as one
  object). A topic no subscription takes is refused there (`bad_topic`), as the daemon's link does not route it.
The config refuses subscriptions that share a topic, so the order above decides nothing.
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

from scada_tcn.runtime.daemon_config import ConfigError, RuntimeConfig
from scada_tcn.runtime.hold import is_unread
from scada_tcn.runtime.records import iso_utc
from scada_tcn.runtime.sparkplug import SparkplugDecoder, topic_filters
from scada_tcn.runtime.tag_topics import TagObjectDecoder, TagPayload, TagTopicDecoder
from scada_tcn.runtime.telemetry import (
    BATCH_FORMATS,
    BatchDecode,
    Rejection,
    Sample,
    TelemetryDecoder,
    parse_timestamp_ns,
    topic_filter,
)

__all__ = ["Ingress", "captured", "explain", "survey"]


class Ingress:
    """The decoders of a runtime.yaml against a bundle's channels, and which one reads a topic (see the module
    docstring)."""

    def __init__(self, cfg: RuntimeConfig, bundle: Any) -> None:
        mapping = dict(cfg.mapping.columns) or dict(bundle.column_mapping)
        self.telemetry_filter, level = topic_filter(cfg.topics.telemetry, cfg.site, cfg.gateway)
        try:
            self.decoder = TelemetryDecoder(
                channels=bundle.spec.channels,
                key_of_channel=mapping,
                turbine_level=level,
                max_payload_bytes=cfg.ingest.max_payload_bytes,
                max_future_s=cfg.ingest.max_future_s,
                max_past_s=cfg.ingest.max_past_s,
                allowed_turbines=cfg.ingest.turbines,
                max_batch_payload_bytes=cfg.ingest.max_batch_payload_bytes,
                epoch_unit=cfg.ingest.epoch_unit,
                ignored_keys=cfg.mapping.ignored_keys,
                numeric_strings=cfg.ingest.numeric_strings,
                naive_timezone=cfg.ingest.naive_timezone,
                tag_pattern=cfg.mapping.tag_pattern,
            )
        except ValueError as e:  # runtime.yaml's mapping against the bundle's channels: a config error, said so
            channels = list(bundle.spec.channels)
            raise ConfigError(f"runtime.yaml mapping against the bundle's channels {channels}: {e}") from None
        tb = cfg.topics.telemetry_batch
        self.batch_topic = None if tb is None else tb.format(site=cfg.site, gateway=cfg.gateway)
        self._decode_batch = getattr(self.decoder, BATCH_FORMATS[cfg.ingest.batch_format])
        self._batch_part = "line" if cfg.ingest.batch_format == "lines" else "element"  # what refusals are counted in
        self._turbine_part = "tag" if cfg.ingest.telemetry_format == "tags" else "element"  # ... on a turbine's topic
        group = cfg.topics.sparkplug_group
        self.sparkplug = (
            None if group is None else SparkplugDecoder(self.decoder, group.format(site=cfg.site, gateway=cfg.gateway))
        )
        t, tpl = cfg.mapping.tag_payload, cfg.topics.telemetry_tag
        tag = TagPayload(self.decoder, t.value, t.ts, t.quality, t.good, t.other_keys)
        self.tags = None if tpl is None else TagTopicDecoder(tag, tpl, cfg.site, cfg.gateway)
        self._decode = self.decoder.decode if cfg.ingest.telemetry_format == "values" else TagObjectDecoder(tag).decode
        spb = [] if self.sparkplug is None else topic_filters(self.sparkplug.group)
        tags = [] if self.tags is None else [self.tags.filter]
        batch = [] if self.batch_topic is None else [self.batch_topic]
        self.filters = [self.telemetry_filter, *batch, *spb, *tags]  # the subscriptions, each routed here

    def route(self, topic: str) -> str:
        """The setting whose decoder reads `topic`: topics.telemetry_batch, topics.sparkplug_group,
        topics.telemetry_tag, or topics.telemetry (any other topic)."""
        if topic == self.batch_topic:
            return "telemetry_batch"
        if self.sparkplug is not None and self.sparkplug.reads(topic):
            return "sparkplug_group"
        if self.tags is not None and self.tags.reads(topic):
            return "telemetry_tag"
        return "telemetry"

    def decode(self, topic: str, payload: bytes, now_ns: int) -> tuple[Sample | BatchDecode | Rejection, str]:
        """(the message read by the decoder its topic routes to, what its parts are called in refusals)."""
        route = self.route(topic)
        if route == "telemetry_batch":
            return self._decode_batch(payload, now_ns), self._batch_part
        if route == "sparkplug_group":
            return self.sparkplug.decode(topic, payload, now_ns), "metric"  # type: ignore[union-attr]
        if route == "telemetry_tag":
            return self.tags.decode(topic, payload, now_ns), "element"  # type: ignore[union-attr]
        return self._decode(topic, payload, now_ns), self._turbine_part


def explain(ingress: Ingress, topic: str, payload: bytes, now_ns: int) -> dict[str, Any]:
    """What the daemon would read in one message (`scada-runtime decode`): the setting that routes it, each sample
    (turbine, stamp, channel -> value, null for a value the source says it lacks, and the failed reads), and each
    refusal with its reason, detail and place. A topic no subscription takes is refused (`bad_topic`)."""
    if not any(topic_matches_sub(f, topic) for f in ingress.filters):
        why = f"no subscription of this config takes this topic; they are {ingress.filters}"
        return {"topic": topic, "read_as": None, "samples": [], "refused": [{"reason": "bad_topic", "detail": why}]}
    res, _ = ingress.decode(topic, payload, now_ns)
    route = ingress.route(topic)
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
