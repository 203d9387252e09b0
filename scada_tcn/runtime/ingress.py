"""Which decoder reads a telemetry message, by its topic: the one routing of the daemon and of
`scada-runtime decode` (`runtime.message_check`).

Contract
--------
`Ingress(cfg, bundle)` builds the decoders a runtime.yaml asks for against the bundle's channels (a mapping that
does not fit them raises ConfigError) and `filters`, the subscriptions they need. `decode(topic, payload,
now_ns)` gives a `Decoded`: what the message holds (a Sample, a BatchDecode or a Rejection), the setting whose
decoder read it (`route`) and what its parts are called in refusals (line, element, tag or metric). It never
raises on bad input:
* `topics.telemetry_batch`: the form `ingest.batch_format` names;
* the Sparkplug group's topics (`topics.sparkplug_group`): `SparkplugDecoder`, which keeps the births;
* per-tag topics (`topics.telemetry_tag`): `TagTopicDecoder`;
* any other topic: a turbine's, in the form `ingest.telemetry_format` names (documents, or its tags as one
  object). A topic no subscription takes is refused there (`bad_topic`), as the daemon's link does not route it.
The config refuses subscriptions that share a topic, so the order above decides nothing.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from scada_tcn.runtime.daemon_config import ConfigError, RuntimeConfig
from scada_tcn.runtime.opcua_pubsub import PubSubDecoder
from scada_tcn.runtime.sparkplug import SparkplugDecoder, topic_filters
from scada_tcn.runtime.tag_topics import TagObjectDecoder, TagPayload, TagTopicDecoder
from scada_tcn.runtime.telemetry import (
    BATCH_FORMATS,
    BatchDecode,
    Rejection,
    Sample,
    TelemetryDecoder,
    topic_filter,
)

__all__ = ["Decoded", "Ingress"]


class Decoded(NamedTuple):
    """A message as `Ingress.decode` read it."""

    result: Sample | BatchDecode | Rejection
    route: str  # the setting whose decoder read it: telemetry, telemetry_batch, sparkplug_group or telemetry_tag
    part: str  # what its parts are called in refusals: line, element, field, tag or metric


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
        fmt, method = cfg.ingest.batch_format, BATCH_FORMATS[cfg.ingest.batch_format]
        self._decode_batch = (
            getattr(self.decoder, method) if method else PubSubDecoder(self.decoder, cfg.mapping.opcua_turbine).decode
        )
        self._batch_part = {"lines": "line", "opcua": "field"}.get(fmt, "element")  # what refusals are counted in
        self._turbine_part = "tag" if cfg.ingest.telemetry_format == "tags" else "element"  # ... on a turbine's topic
        group = cfg.topics.sparkplug_group
        self.sparkplug = (
            None if group is None else SparkplugDecoder(self.decoder, group.format(site=cfg.site, gateway=cfg.gateway))
        )
        t, tpl = cfg.mapping.tag_payload, cfg.topics.telemetry_tag
        tag = TagPayload(self.decoder, t.value, t.ts, t.quality, t.good, t.other_keys, t.quality_rule)
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

    def decode(self, topic: str, payload: bytes, now_ns: int) -> Decoded:
        """The message read by the decoder its topic routes to (see the module docstring)."""
        route = self.route(topic)
        if route == "telemetry_batch":
            return Decoded(self._decode_batch(payload, now_ns), route, self._batch_part)
        if route == "sparkplug_group":
            return Decoded(self.sparkplug.decode(topic, payload, now_ns), route, "metric")  # type: ignore[union-attr]
        if route == "telemetry_tag":
            return Decoded(self.tags.decode(topic, payload, now_ns), route, "element")  # type: ignore[union-attr]
        return Decoded(self._decode(topic, payload, now_ns), route, self._turbine_part)
