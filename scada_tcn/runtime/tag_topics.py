"""Telemetry sent one value per message, on a topic per tag (`topics.telemetry_tag`).

Contract
--------
A unified namespace, HiveMQ Edge's protocol adapters, AVEVA's JSON-VTQ1, Xentara and many Node-RED flows publish
each tag on its own topic, e.g. `uns/farm/WT01/scada/Nacelle/WindSpeed`. The template (runtime.yaml
`topics.telemetry_tag`) holds `{turbine}` as a whole level and ends with the level `{key}`: the rest of the topic
from there, one or more levels, is the tag's payload key (`mapping.columns`, `mapping.ignored_keys`). The payload
is one JSON object (at most `ingest.max_payload_bytes`) whose keys `mapping.tag_payload` names:

    {"value": 7.9, "timestamp": "2024-01-28T00:10:00Z"}              (the default keys)
    {"d": 7.9, "dt": 5, "ts": "2024-01-28T00:10:00Z", "q": 192}      (AVEVA's JSON-VTQ1: value d, stamp ts,
                                                                     quality q, good [192], other key dt)

* the stamp (`ts` key) is read as a telemetry document's `ts` (`TelemetryDecoder.stamp`: ISO-8601, or epoch
  seconds or milliseconds by `ingest.epoch_unit`, the same clock checks). A message without one is refused
  (`missing_ts`): a value stamped on arrival would be placed by the broker's delivery, not by when it was read.
* the value (`value` key) is a number, null (the source has no value: `hold.UNREAD`), or under
  `ingest.numeric_strings` a number as text.
* the quality (`quality` key, when set): a string, an integer or true/false; a value whose quality is not among
  `good` (compared by JSON type and value: 192 is not "192" nor true) is a failed read, `UNREAD` and in the
  sample's `failed`, whatever value is beside it or when none is. A quality of another type (null, 192.0, an
  object) refuses the message (`bad_value_type`): the config does not match the source. A message without the
  quality key is a good read, as Kepware's and Sparkplug's are.
* keys other than these and `other_keys` refuse the message (`unknown_key`).

`TagTopicDecoder.decode(topic, payload, now_ns)` gives a `BatchDecode` of one sample (one channel read, the others
absent: NaN), none for a key `mapping.ignored_keys` drops (whatever its payload), or a `Rejection`; it never raises
on bad input. A topic's turbine and channel are resolved once and kept (at most `_TOPICS_KEPT` topics of at most
`_TOPIC_KEPT_CHARS` characters; when full, all are forgotten).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from scada_tcn.runtime.hold import UNREAD
from scada_tcn.runtime.telemetry import NOT_READ, BatchDecode, Rejection, Sample, TelemetryDecoder, parsed

__all__ = ["KEY", "TagTopicDecoder", "tag_filter", "template_problem"]

KEY = "{key}"  # the template's last level: the tag's payload key, one or more topic levels
_TOPICS_KEPT = 1 << 16  # topics resolved and kept: a fleet's turbines x tags; hostile topics beyond are resolved anew
_TOPIC_KEPT_CHARS = 256  # ... and only topics this short
_NAMES = ("site", "gateway", "turbine", "key")
_IGNORED = ("", NOT_READ)  # a topic whose key mapping.ignored_keys drops


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


class TagTopicDecoder:
    """Per-tag telemetry messages -> samples, by the keys of `mapping.tag_payload` (see the module docstring)."""

    def __init__(
        self,
        decoder: TelemetryDecoder,
        template: str,
        site: str,
        gateway: str,
        value: str = "value",
        ts: str = "timestamp",
        quality: str | None = None,
        good: Sequence[Any] = (),
        other_keys: Sequence[str] = (),
    ) -> None:
        problem = template_problem(template)
        if problem is not None:
            raise ValueError(f"TagTopicDecoder: {problem}")
        self.decoder = decoder
        self.filter, self._topic = tag_filter(template, site, gateway)
        levels = [r"[^/]*" if lv == "+" else re.escape(lv) for lv in self.filter.split("/")[:-1]]
        self._subscribed = re.compile("/".join(levels) + "(?:/.*)?", re.DOTALL)
        self.value_key, self.ts_key, self.quality_key = value, ts, quality
        self._good = frozenset((type(g), g) for g in good)
        self._allowed = frozenset([value, ts, *([quality] if quality is not None else []), *other_keys])
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
            return BatchDecode([], [], _nowhere)
        d = self.decoder
        doc = parsed(payload, d.max_payload_bytes, "max_payload_bytes")
        if isinstance(doc, Rejection):
            return doc
        if not isinstance(doc, dict):
            return Rejection("not_an_object", f"payload is a JSON {type(doc).__name__}: a tag's message is an object "
                             f"holding its value under {self.value_key!r} and its stamp under {self.ts_key!r} "
                             "(mapping.tag_payload)")  # fmt: skip
        if doc.keys() - self._allowed:
            extra = sorted(str(k)[:40] for k in doc if k not in self._allowed)
            return Rejection("unknown_key", f"keys {extra[:5]}; allowed: {sorted(self._allowed)} (list keys the "
                             "source adds in mapping.tag_payload.other_keys)")  # fmt: skip
        if self.ts_key not in doc:
            return Rejection("missing_ts", f"no {self.ts_key!r}")
        ts = d.stamp(doc[self.ts_key], now_ns, self.ts_key)
        if isinstance(ts, Rejection):
            return ts
        tid, i = where
        values = np.full(len(d.channels), math.nan)
        good = self._good_quality(doc)
        if isinstance(good, Rejection):
            return good
        if not good:
            values[i] = UNREAD
            return BatchDecode([Sample(tid, ts, values, (i,))], [], _nowhere)
        if self.value_key not in doc:
            return Rejection("missing_values", f"no {self.value_key!r}")
        v = doc[self.value_key]
        key = d.key_of_channel[d.channels[i]]  # refusals name the payload key, as the document form's do
        x = UNREAD if v is None else v if type(v) is float and math.isfinite(v) else d.number(key, v)
        if isinstance(x, Rejection):
            return x
        values[i] = x
        return BatchDecode([Sample(tid, ts, values)], [], _nowhere)

    def _good_quality(self, doc: dict[str, Any]) -> bool | Rejection:
        """Whether the message's value is a good read: no quality key set or sent, or a quality among `good`."""
        if self.quality_key is None or self.quality_key not in doc:
            return True
        q = doc[self.quality_key]
        if type(q) not in (str, int, bool):
            return Rejection("bad_value_type", f"{self.quality_key}: {type(q).__name__}, expected a quality (a "
                             "string, an integer or true/false)")  # fmt: skip
        return (type(q), q) in self._good

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


def _nowhere(place: Any) -> dict[str, Any]:
    """A per-tag message refuses nothing in part: it has no places."""
    raise AssertionError(f"a tag's message has no parts to place ({place!r})")
