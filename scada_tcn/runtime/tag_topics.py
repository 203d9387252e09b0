"""Telemetry sent tag by tag: one value per message on a topic per tag (`topics.telemetry_tag`), or a turbine's
tags as one object on its telemetry topic (`ingest.telemetry_format: tags`).

Contract
--------
A tag's payload is a JSON object whose keys `mapping.tag_payload` names (`TagPayload.read`):

    {"value": 7.9, "timestamp": "2024-01-28T00:10:00Z"}              (the default keys)
    {"d": 7.9, "dt": 5, "ts": "2024-01-28T00:10:00Z", "q": 192}      (AVEVA's JSON-VTQ1: value d, stamp ts,
                                                                     quality q, good [192], other key dt)
    {"SourceTimestamp": "2024-01-28T00:10:00Z", "Value": 7.9}        (an OPC UA DataValue: value Value, stamp
                                                                     SourceTimestamp, quality StatusCode,
                                                                     quality_rule opcua)

* the stamp (`ts` key) is read as a telemetry document's `ts` (`TelemetryDecoder.stamp`: ISO-8601, or epoch
  seconds or milliseconds by `ingest.epoch_unit`, the same clock checks). A tag without one is refused
  (`missing_ts`): a value stamped on arrival would be placed by the broker's delivery, not by when it was read.
* the value (`value` key) is a number, null (the source has no value: `hold.UNREAD`), or under
  `ingest.numeric_strings` a number as text.
* the quality (`quality` key, when set): a string, an integer or true/false; a value whose quality is not among
  `good` (compared by JSON type and value: 192 is not "192" nor true) is a failed read, `UNREAD` and in the
  sample's `failed`, whatever value is beside it or when none is. A quality of another type (null, 192.0, an
  object) refuses the tag (`bad_value_type`): the config does not match the source. A tag without the quality
  key is a good read, as Kepware's and Sparkplug's are. Under `quality_rule: opcua` the quality is an OPC UA
  StatusCode (an integer, or `{"Code", "Symbol"}`): Good severity is a read, Uncertain and Bad failed reads
  (`opcua_good`), and `good` is empty; a payload without the value key is a null value (OPC UA's JSON leaves a
  null Value out), where otherwise it is refused (`missing_values`), and a null StatusCode a Good one (as one
  left out). OPC UA's JSON writes some numbers as text (OPC 10000-6, 5.4.2.3-4): an Int64 or UInt64 as its
  decimal digits (read as the number), a Float or Double's NaN as "NaN" (no value: null) and its infinities as
  "Infinity" and "-Infinity" (refused, `non_finite`, as other non-finite values are); other text is a String's
  and is read only under `ingest.numeric_strings`, as elsewhere (`opcua_number`). A DataValue whose `UaType`
  (OPC UA 1.05's built-in type id) is a text type (String, DateTime, Guid, ByteString...) is read as text
  whatever its characters.
* keys other than these and `other_keys` refuse the tag (`unknown_key`).

Per-tag topics (`TagTopicDecoder`): a unified namespace, HiveMQ Edge's protocol adapters, AVEVA's JSON-VTQ1,
Xentara and many Node-RED flows publish each tag on its own topic, e.g. `uns/farm/WT01/scada/Nacelle/WindSpeed`.
The template holds `{turbine}` as a whole level, once, and ends with the level `{key}`: the rest of the topic from
there, one or more levels, is the tag's payload key (`mapping.columns`, `mapping.ignored_keys`). The payload (at
most `ingest.max_payload_bytes`) is one tag's. `decode(topic, payload, now_ns)` gives a `BatchDecode` of one
sample (one channel read, the others absent: NaN), none for a key `mapping.ignored_keys` drops (whatever its
payload), or a `Rejection`. A topic's turbine and channel are resolved once and kept (at most `_TOPICS_KEPT`
topics of at most `_TOPIC_KEPT_CHARS` characters; when full, all are forgotten).

A turbine's tags as one object (`TagObjectDecoder`), as Azure IoT Operations' connector for OPC UA publishes an
asset's data points: `{"<key>": <a tag's payload>, ...}` on the turbine's telemetry topic. Each tag is judged
alone, as a Kepware element is (see the class). Neither decoder raises on bad input.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from scada_tcn.runtime.hold import UNREAD
from scada_tcn.runtime.telemetry import (
    NOT_READ,
    BatchDecode,
    ChannelValue,
    Rejection,
    Sample,
    TelemetryDecoder,
    grouped,
    parsed,
    shown,
)

__all__ = [
    "KEY", "QUALITY_RULES", "TagObjectDecoder", "TagPayload", "TagTopicDecoder", "opcua_good", "opcua_number",
    "tag_filter", "template_problem",
]  # fmt: skip

KEY = "{key}"  # the template's last level: the tag's payload key, one or more topic levels
QUALITY_RULES = ("listed", "opcua")  # mapping.tag_payload.quality_rule: the qualities in `good`, or OPC UA's severity
_TOPICS_KEPT = 1 << 16  # topics resolved and kept: a fleet's turbines x tags; hostile topics beyond are resolved anew
_TOPIC_KEPT_CHARS = 256  # ... and only topics this short
_NAMES = ("site", "gateway", "turbine", "key")
_IGNORED = ("", NOT_READ)  # a topic whose key mapping.ignored_keys drops
# OPC UA built-in types written as JSON text that is no number: String, DateTime, Guid, ByteString, XmlElement,
# NodeId, ExpandedNodeId (a DataValue's `UaType`)
_TEXT_TYPES = frozenset(range(12, 19))
_OPCUA_INTEGER = re.compile(r"[+-]?[0-9]{1,40}")  # an Int64's or UInt64's text in OPC UA's JSON (ASCII digits)


def template_problem(template: str) -> str | None:
    """Why `template` cannot be `topics.telemetry_tag`, or None: it must hold {turbine} as a whole level and end
    with the level {key}, use no other placeholders than {site}, {gateway}, {turbine}, {key}, and no wildcards."""
    levels = template.split("/")
    example = "e.g. uns/{site}/{turbine}/scada/{key}"
    if "+" in template or "#" in template:
        return f"topics.telemetry_tag: no wildcards, got {template!r} ({example})"
    try:
        template.format(**{n: n for n in _NAMES})
    except (KeyError, IndexError, ValueError) as e:
        return f"topics.telemetry_tag: only {{site}}, {{gateway}}, {{turbine}}, {{key}} may be used ({e!r})"
    if levels[-1] != KEY or template.count(KEY) != 1 or template.count("{turbine}") != 1 or "{turbine}" not in levels:
        return (f"topics.telemetry_tag: {{turbine}} must be a whole topic level and {KEY} the last one, each once, got "
                f"{template!r} ({example})")  # fmt: skip
    return None


def tag_filter(template: str, site: str, gateway: str) -> tuple[str, re.Pattern[str]]:
    """(MQTT subscription filter of every tag topic of a valid `template`: `+` at {turbine}, `#` at {key}; the
    pattern whose `fullmatch` of a topic gives the turbine id, group 1, and the key, group 2)."""
    marked = template.format(site=site, gateway=gateway, turbine="\0", key="\1")
    filt = "/".join("+" if "\0" in lv else "#" if lv == "\1" else lv for lv in marked.split("/"))
    return filt, re.compile(re.escape(marked).replace("\0", "([^/]+)").replace("\1", "(.+)"), re.DOTALL)


class TagPayload:
    """How one tag's payload is read: the keys `mapping.tag_payload` names (see the module docstring)."""

    def __init__(
        self,
        decoder: TelemetryDecoder,
        value: str = "value",
        ts: str = "timestamp",
        quality: str | None = None,
        good: Sequence[Any] = (),
        other_keys: Sequence[str] = (),
        quality_rule: str = "listed",
    ) -> None:
        if quality_rule not in QUALITY_RULES:
            raise ValueError(f"TagPayload: quality_rule must be one of {QUALITY_RULES}, got {quality_rule!r}")
        self.decoder = decoder
        self.value_key, self.ts_key, self.quality_key = value, ts, quality
        self._opcua = quality_rule == "opcua"
        self._good = frozenset((type(g), g) for g in good)
        self._allowed = frozenset([value, ts, *([quality] if quality is not None else []), *other_keys])

    def read(self, tid: str, i: int, doc: Any, now_ns: int, ts_ns: int | None = None) -> ChannelValue | Rejection:
        """A tag's parsed payload (channel `i` of turbine `tid`) -> its value (failed: a quality not among the
        good ones), or why it is refused. `ts_ns`: the stamp of a payload without its own (an OPC UA field's, its
        DataSetMessage's `Timestamp`, read once); None: such a payload is refused."""
        d = self.decoder
        if not isinstance(doc, dict):
            return Rejection("not_an_object", f"a tag's payload is a JSON {type(doc).__name__}: an object holding "
                             f"its value under {self.value_key!r} and its stamp under {self.ts_key!r} "
                             "(mapping.tag_payload)")  # fmt: skip
        if doc.keys() - self._allowed:
            extra = sorted(str(k)[:40] for k in doc if k not in self._allowed)
            return Rejection("unknown_key", f"keys {extra[:5]}; allowed: {sorted(self._allowed)} (list keys the "
                             "source adds in mapping.tag_payload.other_keys)")  # fmt: skip
        if self.ts_key not in doc and ts_ns is None:
            return Rejection("missing_ts", f"no {self.ts_key!r}")
        ts = d.stamp(doc[self.ts_key], now_ns, self.ts_key) if self.ts_key in doc else ts_ns
        if isinstance(ts, Rejection):
            return ts
        good = self._good_quality(doc)
        if isinstance(good, Rejection):
            return good
        if not good:
            return tid, ts, i, UNREAD, True
        if self.value_key not in doc and not self._opcua:
            return Rejection("missing_values", f"no {self.value_key!r}")
        # OPC UA's JSON leaves a DataValue's null Value out, as it does a Good status: no value, as null is
        v, key = doc.get(self.value_key), d.key_of_channel[d.channels[i]]  # refusals name the payload key
        ua = doc.get("UaType")  # a text type keeps digits text; anything but a type id says nothing
        x = (
            opcua_number(key, v)
            if self._opcua and type(v) is str and not (type(ua) is int and ua in _TEXT_TYPES)
            else None
        )
        x = d.value(key, v) if x is None else x
        return x if isinstance(x, Rejection) else (tid, ts, i, x, False)

    def _good_quality(self, doc: dict[str, Any]) -> bool | Rejection:
        """Whether the value is a good read: no quality key set or sent, a quality among `good`, or under the
        `opcua` rule a StatusCode of Good severity (`opcua_good`)."""
        if self.quality_key is None or self.quality_key not in doc:
            return True
        q = doc[self.quality_key]
        if self._opcua:
            return q is None or opcua_good(q, self.quality_key)
        if type(q) not in (str, int, bool):
            return Rejection("bad_value_type", f"{self.quality_key}: {type(q).__name__}, expected a quality (a "
                             "string, an integer or true/false)")  # fmt: skip
        return (type(q), q) in self._good


def opcua_number(key: str, text: str) -> float | Rejection | None:
    """A number OPC UA's JSON writes as text (OPC 10000-6, 5.4.2.3-4), `key` its payload key: an Int64 or UInt64's
    decimal digits (a sign and leading zeros allowed, the value within -2^63 .. 2^64 - 1, else refused) -> the
    number; "NaN" -> `UNREAD` (no value); "Infinity", "-Infinity" -> refused (`non_finite`); None for other text
    (a String's)."""
    if _OPCUA_INTEGER.fullmatch(text):
        n = int(text)
        if not -(1 << 63) <= n < 1 << 64:
            return Rejection("bad_value_type", f"{key}: {text[:40]!r} is beyond Int64 and UInt64")
        return float(n)
    if text == "NaN":
        return UNREAD
    if text in ("Infinity", "-Infinity"):
        return Rejection("non_finite", f"{key}: {text}")
    return None


def opcua_good(code: Any, name: str) -> bool | Rejection:
    """Whether an OPC UA StatusCode in JSON is of Good severity (its top two bits 0; Uncertain and Bad are not): an
    integer from 0 to 2^32 - 1, or an object {"Code": integer, "Symbol": text} (Code absent or null: 0, Good), as
    the non-reversible and 1.05 encodings write it; a Symbol alone is judged by its first word (Good, Uncertain,
    Bad). Anything else is refused (`bad_value_type`), `name` its key."""
    if type(code) is dict and code.keys() <= {"Code", "Symbol"}:
        if "Code" not in code and isinstance(code.get("Symbol"), str):  # a symbol alone: its severity's word
            severity = next((w for w in ("Good", "Uncertain", "Bad") if code["Symbol"].startswith(w)), None)
            if severity is not None:
                return severity == "Good"
        code = 0 if code.get("Code") is None else code["Code"]  # (absent or null: the default, Good)
    if type(code) is not int or not 0 <= code < 1 << 32:
        return Rejection("bad_value_type", f"{name}: an OPC UA StatusCode is an integer from 0 to 2^32 - 1 or "
                         f"{{Code, Symbol}}, got {shown(code, 60)}")  # fmt: skip
    return code >> 30 == 0


class TagTopicDecoder:
    """Per-tag telemetry messages (`topics.telemetry_tag`) -> samples (see the module docstring)."""

    def __init__(self, tag: TagPayload, template: str, site: str, gateway: str) -> None:
        problem = template_problem(template)
        if problem is not None:
            raise ValueError(f"TagTopicDecoder: {problem}")
        self.tag, self.decoder = tag, tag.decoder
        self.filter, self._topic = tag_filter(template, site, gateway)
        levels = [r"[^/]*" if lv == "+" else re.escape(lv) for lv in self.filter.split("/")[:-1]]
        self._subscribed = re.compile("/".join(levels) + "(?:/.*)?", re.DOTALL)
        self._topics: dict[str, tuple[str, int]] = {}

    def reads(self, topic: str) -> bool:
        """Whether the subscription `filter` takes `topic` (the daemon routes it here; MQTT's `#` also takes the
        level above it)."""
        return self._subscribed.fullmatch(topic) is not None

    def decode(self, topic: str, payload: bytes, now_ns: int) -> BatchDecode | Rejection:
        """One message on a tag topic -> a BatchDecode of its sample (none for an ignored key), or why it is
        refused."""
        where = self._resolved(topic)
        if isinstance(where, Rejection):
            return where
        if where is _IGNORED:  # dropped whatever its payload, as an ignored key's value is
            return BatchDecode([], [], _tag_at)
        doc = parsed(payload, self.decoder.max_payload_bytes, "max_payload_bytes")
        got = doc if isinstance(doc, Rejection) else self.tag.read(*where, doc, now_ns)
        if isinstance(got, Rejection):
            return got
        tid, ts, i, x, failed = got  # one value: its sample at once (`grouped` of one value, a third of the time)
        values = np.full(len(self.decoder.channels), math.nan)
        values[i] = x
        return BatchDecode([Sample(tid, ts, values, (i,) if failed else ())], [], _tag_at)

    def _resolved(self, topic: str) -> tuple[str, int] | Rejection:
        """A tag topic -> (turbine, channel index), `_IGNORED` for a key in `ignored_keys`, or why it is refused."""
        where = self._topics.get(topic)
        if where is not None:
            return where
        match = self._topic.fullmatch(topic)
        if match is None:
            return Rejection("bad_topic", f"topic {topic[:200]!r} has no tag key after its turbine's level "
                             "(topics.telemetry_tag)")  # fmt: skip
        tid = self.decoder.check_turbine(match[1])
        if isinstance(tid, Rejection):
            return tid
        i = self.decoder.channel_of(match[2])
        if i is None:
            return self.decoder.no_channel(f"tag {match[2][:60]!r} of topic {topic[:200]!r} is not a channel", "tags")
        where = _IGNORED if i == NOT_READ else (tid, i)
        if len(topic) <= _TOPIC_KEPT_CHARS:
            if len(self._topics) >= _TOPICS_KEPT:  # a publisher's made-up topics: forget them all, as a fleet's recur
                self._topics.clear()
            self._topics[topic] = where
        return where


class TagObjectDecoder:
    """A turbine's tags in one message on its telemetry topic (`ingest.telemetry_format: tags`): one JSON object of
    tag key -> that tag's payload, as Azure IoT Operations' connector for OPC UA publishes an asset's data points
    (`{"Temperature": {"SourceTimestamp": "...", "Value": 21.5}, ...}`). Each tag is judged alone, as a Kepware
    element is: a refused one (a key of no channel, a bad stamp or value) costs its value only, placed by its
    `tag`; a key `mapping.ignored_keys` drops is skipped whatever its payload. The values of one stamp make one
    sample (`telemetry.grouped`). The message is refused whole when it is larger than `max_payload_bytes`, not
    UTF-8, not a JSON object, or empty."""

    def __init__(self, tag: TagPayload) -> None:
        self.tag, self.decoder = tag, tag.decoder

    def decode(self, topic: str, payload: bytes, now_ns: int) -> BatchDecode | Rejection:
        """One message on a turbine's telemetry topic -> its samples and refused tags, or why it is refused whole."""
        d = self.decoder
        tid = d.turbine_of(topic)
        if isinstance(tid, Rejection):
            return tid
        doc = parsed(payload, d.max_payload_bytes, "max_payload_bytes")
        if isinstance(doc, Rejection):
            return doc
        form = "a turbine's tags are one object of tag key -> its payload (ingest.telemetry_format: tags)"
        if not isinstance(doc, dict):
            return Rejection("not_an_object", f"payload is a JSON {type(doc).__name__}: {form}")
        if not doc:
            return Rejection("missing_values", f"payload is an empty object: {form}")
        read: list[ChannelValue] = []
        rejected: list[tuple[str, Rejection]] = []
        for key, obj in doc.items():
            i = d.channel_of(key)
            if i == NOT_READ:
                continue
            got = d.no_channel(f"tag {key[:60]!r} is not a channel", "tags") if i is None else self.tag.read(
                tid, i, obj, now_ns)  # fmt: skip
            if isinstance(got, Rejection):
                rejected.append((key, got))
            else:
                read.append(got)
        return BatchDecode(grouped(read, len(d.channels)), rejected, _tag_at)


def _tag_at(key: str) -> dict[str, Any]:
    """A refused tag's place in a message of a turbine's tags: its key."""
    return {"tag": key[:100]}
