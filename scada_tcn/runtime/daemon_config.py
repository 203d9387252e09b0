"""The edge daemon's configuration (`runtime.yaml`): a strict, typed schema with environment overrides.

Contract
--------
* One frozen dataclass per section; every field has a default and a one-line description (`metadata["doc"]`).
* `load_daemon_config(path, environ)` reads YAML (PyYAML `safe_load`), applies overrides from `environ` and validates.
  The environment is passed in explicitly: nothing is read at import time. An override is
  `SCADA_RT_<SECTION>__<KEY>=value` (double underscore between levels, case-insensitive), e.g.
  `SCADA_RT_BROKER__URL=mqtts://broker:8883` or `SCADA_RT_MAPPING__COLUMNS='{power: P_kW}'`; the value is
  parsed as YAML, so numbers, booleans, lists and mappings work.
* Refused (ConfigError, naming the dotted key and the allowed keys): unknown keys in the file or the environment,
  wrong types, and violated invariants (ranges, a telemetry template without `{turbine}`, TLS files on an
  `mqtt://` URL, a password without a username, ...). Validation is pure: files named in the config (TLS,
  password file) are checked to exist only when the daemon starts, not here.
* `redacted(cfg)` is the resolved config as plain data with secrets replaced, for logs and for saving.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from scada_tcn.runtime.csv_table import dialect_problem
from scada_tcn.runtime.errors import ConfigError
from scada_tcn.runtime.ids import id_pattern_problem
from scada_tcn.runtime.opcua_pubsub import TURBINE_FIELDS
from scada_tcn.runtime.sparkplug import NAMESPACE, command_filter, host_state_topic, topic_filters
from scada_tcn.runtime.tag_topics import QUALITY_RULES, tag_filter, template_problem
from scada_tcn.runtime.telemetry import (
    BATCH_FORMATS,
    EPOCH_UNITS,
    tag_pattern_problem,
    time_format_problem,
    turbine_topics,
    zone_problem,
)

ENV_PREFIX = "SCADA_RT_"
ISO_STAMPS = "ISO8601"  # mapping.time_format: ISO-8601 or epoch seconds, whatever the training table's
_SPB = "sparkplug_group"  # topics.sparkplug_group: a group id, not a topic template
_HOST = "sparkplug_host_id"  # topics.sparkplug_host_id: a host id, not a topic template
_TAG = "telemetry_tag"  # topics.telemetry_tag: a template with {key}, checked by _tag_problems
TELEMETRY_FORMATS = ("values", "tags")  # ingest.telemetry_format: the form of messages on topics.telemetry


def _f(default: Any, doc: str) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class TlsCfg:
    ca_file: str | None = _f(None, "CA certificate (PEM) that signed the broker's certificate; None = system CAs")
    cert_file: str | None = _f(None, "client certificate (PEM) for mutual TLS")
    key_file: str | None = _f(None, "client private key (PEM) for mutual TLS")
    insecure: bool = _f(False, "skip the broker hostname check (testing only)")


@dataclass(frozen=True)
class BrokerCfg:
    url: str = _f("mqtt://localhost:1883", "mqtt://host:port (plain) or mqtts://host:port (TLS)")
    client_id: str | None = _f(
        None,
        "MQTT client id of the telemetry subscriber (the publisher adds -pub); None = "
        "scada-runtime-<gateway>. Must be stable: the broker keeps its session",
    )
    username: str | None = _f(None, "broker user name")
    password: str | None = _f(None, "broker password (prefer password_file or SCADA_RT_BROKER__PASSWORD)")
    password_file: str | None = _f(None, "file whose first line is the broker password")
    keepalive_s: int = _f(30, "MQTT keepalive in seconds")
    session_expiry_s: int = _f(7 * 86400, "how long the broker keeps our session and queued telemetry offline")
    reconnect_min_s: int = _f(1, "first reconnect delay; doubles on each failure")
    reconnect_max_s: int = _f(60, "cap of the reconnect delay")
    tls: TlsCfg = _f(TlsCfg(), "TLS files (used with mqtts://)")


@dataclass(frozen=True)
class TopicsCfg:
    telemetry: str = _f("scada/{site}/{turbine}/telemetry", "telemetry topic template, needs {turbine}")
    telemetry_batch: str | None = _f(
        None,
        "null = telemetry on `telemetry` only; a topic without {turbine} (e.g. "
        "scada/{site}/{gateway}/telemetry_batch) = also take batched telemetry there: JSON lines, one document per "
        "line with its turbine id under `turbine` (runtime.telemetry), for a farm gateway that sends every "
        "turbine's sample in one message (ingest.batch_format: other forms, e.g. ThingsBoard's gateway API)",
    )
    score: str = _f("scada/{site}/{turbine}/score", "score topic template (QoS 1)")
    alert: str = _f("scada/{site}/{turbine}/alert", "alert transition topic template (QoS 1)")
    alert_state: str = _f("scada/{site}/{turbine}/alert/state", "retained current alert state template")
    status: str = _f("scada/runtime/{gateway}/status", "retained gateway status (last will: offline)")
    errors: str = _f("scada/runtime/{gateway}/errors", "every rejected message, with its reason")
    score_batch: str | None = _f(
        None,
        "null = one message per turbine on `score`; a template without {turbine} (e.g. "
        "scada/{site}/{gateway}/scores) = the score records of each fleet step go out on this one topic as JSON "
        "lines, several per message (records.split_batch), for large fleets; alerts and alert states stay per "
        "turbine",
    )
    score_batch_bytes: int = _f(
        60000, "largest score_batch message (the broker's Maximum Packet Size, when it sends one, caps it too)"
    )
    telemetry_tag: str | None = _f(
        None,
        "null = no per-tag topics; a template with {turbine} as a whole level and {key} as the last (e.g. "
        "uns/{site}/{turbine}/scada/{key}) = also take telemetry sent one value per message on a topic per tag (a "
        "unified namespace, HiveMQ Edge, AVEVA's JSON-VTQ1, Xentara, Node-RED): the topic from {key} on, one or "
        "more levels, is the payload key (mapping.columns), the payload a JSON object (mapping.tag_payload)",
    )
    sparkplug_group: str | None = _f(
        None,
        "null = no Sparkplug B; a Sparkplug group id (may use {site}, {gateway}) = also take that group's Sparkplug "
        "B telemetry (Ignition MQTT Transmission, HiveMQ Edge, Neuron, Tahu): spBv1.0/<group>/NBIRTH|NDATA|NDEATH/"
        "<edge node> (the node is the turbine) and DBIRTH|DDATA|DDEATH/<edge node>/<device> (the device is the "
        "turbine); metric names are payload keys (mapping), a Quality property other than 192 reads as a failed "
        "read, and a metric alias no birth gave asks its node for a rebirth (an NCMD Node Control/Rebirth)",
    )
    sparkplug_host_id: str | None = _f(
        None,
        "null = no Sparkplug STATE; a Sparkplug host id (may use {site}, {gateway}; needs sparkplug_group) = the "
        "daemon is the Sparkplug 3.0 host application of that id: while it takes telemetry it keeps "
        'spBv1.0/STATE/<id> retained at {"online": true, "timestamp": ms}, and offline when it stops or (its '
        "last will) fails, on a connection of its own (client id <client_id>-host, clean start). Edge nodes "
        "configured with this id as their primary host publish only while it is online and store and forward "
        "otherwise",
    )


@dataclass(frozen=True)
class IngestCfg:
    grace_s: float = _f(
        120.0,
        "a bin closes this long after the telemetry reached its end (live: on the wall clock), or at the "
        "turbine's sample stamped this long (at most a step) after it; samples out of order by less find their bin",
    )
    max_future_s: float = _f(300.0, "reject samples stamped more than this ahead of the wall clock")
    max_past_s: float = _f(7 * 86400.0, "reject samples stamped more than this before the wall clock")
    sparkplug_history_wait_s: float = _f(
        0.0,
        "after a Sparkplug node's death (NDEATH), how long its turbines' steps wait for the history the node "
        "stores while away and forwards when back (is_historical): meanwhile no step closes on the clock after "
        "the newest stamp they sent, so other turbines' latest steps close at their next sample and fleet-relative "
        "records wait too; set it above the longest outage to bridge. 0 = none: their steps close as any silent "
        "turbine's, and history sent later is late",
    )
    max_payload_bytes: int = _f(
        65536,
        "reject larger telemetry payloads (and batch lines; an array's elements are bounded as a whole) "
        "before decoding them",
    )
    max_batch_payload_bytes: int = _f(
        4 << 20,
        "reject larger topics.telemetry_batch messages (not neuron's: one sample each, max_payload_bytes), and "
        "arrays of samples on a turbine's topic, before "
        "decoding them",
    )
    max_turbines: int = _f(5000, "cap on the fleet: telemetry of a new turbine beyond this many is rejected")
    max_values_per_stamp: int = _f(
        100,
        "per turbine, stamp and channel: values kept (a publisher whose clock froze stamps every new reading "
        "alike and closes no bin); a sample whose every channel is full is dropped and counted. Above the "
        "readings a channel gets within one stamp (10 a second with whole-second stamps: 10)",
    )
    epoch_unit: str = _f(
        "s",
        "s | ms: the unit of a numeric telemetry `ts` (epoch seconds, or milliseconds as ThingsBoard, "
        "Node-RED's Date.now() and many PLC gateways write them); ISO-8601 stamps are read either way",
    )
    batch_format: str = _f(
        "lines",
        "lines | devices | kepware | neuron | opcua: the form of topics.telemetry_batch messages. lines: JSON lines, "
        "one document per line with its turbine id under `turbine`; devices: one JSON object of turbine id -> array of "
        "documents, as ThingsBoard's gateway API publishes on v1/gateway/telemetry; kepware: Kepware IoT "
        "Gateway's standard template, {timestamp, values: [{id, v, q, t}, ...]}, the turbine and key taken from "
        "each tag id by mapping.tag_pattern, a value of quality false read as null; neuron: EMQX Neuron's MQTT app, "
        "one message per south node (the turbine) and group, its values or tags format, a tag in errors read as "
        "null; opcua: OPC UA PubSub JSON NetworkMessages (OPC Publisher's PubSub mode), one DataSetWriter per "
        "turbine (mapping.opcua_turbine), each field a DataValue or a value, a StatusCode not Good read as null",
    )
    telemetry_format: str = _f(
        "values",
        "values | tags: the form of messages on topics.telemetry. values: {ts, values: {key: value}} documents, or "
        "a JSON array of them; tags: one JSON object of tag key -> that tag's payload (mapping.tag_payload), each "
        "tag with its own stamp, as Azure IoT Operations' connector for OPC UA publishes an asset's data points "
        '({"Temperature": {"SourceTimestamp": ..., "Value": 21.5}, ...})',
    )
    numeric_strings: bool = _f(
        False,
        'true = a value sent as a JSON string holding a plain number ("12.5", as some OPC UA and PLC gateways '
        'send every value) reads as that number, "" as null; any other string still rejects the message',
    )
    naive_timezone: str | None = _f(
        None,
        "null = a telemetry stamp without a UTC offset is refused (naive_timestamp); an IANA zone (e.g. "
        "Europe/Paris) = such an ISO-8601 stamp is a local time of that zone (a gateway or PLC on local clocks): "
        "the hour a DST change skips is refused (nonexistent_local_time); in the hour the autumn change repeats, a "
        "stamp is the first occurrence while the second lies beyond max_future_s, then refused (ambiguous_local_time)",
    )
    turbines: list[str] = _f(
        [],
        "allow-list of turbine ids (recommended); empty = any id of 1-64 letters, digits, "
        "'_', '.', '-', up to max_turbines; a turbine taken off the list is retired at the next start",
    )


@dataclass(frozen=True)
class QueuesCfg:
    inbound: int = _f(
        5000,
        "messages waiting for the loop before the socket is no longer read (the broker keeps "
        "the rest); QoS 0 beyond it is dropped and counted",
    )
    outbound: int = _f(50000, "publishes kept while disconnected (overflow is counted and reported)")
    publish_backlog: int = _f(5000, "publishes awaiting the broker's ack at or above which no new telemetry is taken")
    receive_maximum: int = _f(1000, "unacknowledged QoS 1 telemetry the broker may send at once (MQTT v5 flow control)")


@dataclass(frozen=True)
class ComputeCfg:
    engine: str = _f(
        "auto",
        "auto | stream | window: stream runs the bundle's step graph (one step per turbine, layer state kept), "
        "window re-scores each turbine's L-step window; auto streams when the bundle has a step graph",
    )
    intra_op_threads: int = _f(1, "onnxruntime intra-op threads")
    inter_op_threads: int = _f(1, "onnxruntime inter-op threads")
    max_batch: int = _f(128, "windows per graph call at most (bounds the memory of one scoring call)")
    tick_s: float = _f(1.0, "processing-loop tick: wall-clock bin closing and heartbeat")


@dataclass(frozen=True)
class HealthCfg:
    metrics_host: str = _f("0.0.0.0", "bind address of /metrics and /healthz")
    metrics_port: int = _f(9108, "HTTP port of /metrics and /healthz; 0 = pick a free port")
    stall_s: float = _f(30.0, "/healthz fails and the status says 'stalled' when the loop is idle this long")
    status_interval_s: float = _f(15.0, "refresh period of the retained status")
    drift_window: int = _f(
        1000,
        "score drift: KS of the last N scores (all turbines) against the bundle's "
        "validation-score quantiles, in /metrics and the status",
    )


@dataclass(frozen=True)
class StateCfg:
    path: str | None = _f(
        None,
        "snapshot of every turbine's state (bins, features, ring buffer, alerts), with a write-ahead journal beside "
        "it (<path>.journal) and a copy of the running bundle (<path>.bundles/, for a restart on another bundle): "
        "a restart, even after kill -9, resumes where it stopped and changes no score; None = "
        "a restart warms every turbine up again (L steps) and acknowledged telemetry not yet scored is lost",
    )
    save_interval_s: float = _f(60.0, "how often the snapshot is saved and the journal emptied (and on SIGTERM)")


@dataclass(frozen=True)
class CsvMappingCfg:
    delimiter: str | None = _f(
        None,
        "replay: the table's CSV separator (',' ';' '\\t' '|'); null = the training table's (the bundle's table_csv)",
    )
    decimal: str | None = _f(None, "replay: the value cells' decimal mark ('.' or ','); null = the training table's")
    skip_lines: int | None = _f(
        None, "replay: lines before the header (an exporter's preamble); null = the training table's"
    )
    encoding: str | None = _f(None, "replay: the files' text encoding, e.g. cp1252; null = the training table's")


@dataclass(frozen=True)
class TagPayloadCfg:
    value: str = _f("value", "run: a tag's payload key of the value (a number or null)")
    ts: str = _f("timestamp", "run: a tag's payload key of the stamp (as a document's ts)")
    quality: str | None = _f(
        None,
        "run: a tag's payload key of the value's quality; null = none read. A message without it is a good read",
    )
    good: list[str | int | bool] = _f(
        [],
        "run: the qualities of a good read, by JSON type and value (OPC DA: [192]; "
        "[good]; [true]); any other quality is a failed read (null). Needed with quality",
    )
    other_keys: list[str] = _f([], "run: other payload keys the source sends, not read (e.g. AVEVA's [dt])")
    quality_rule: str = _f(
        "listed",
        "run: listed | opcua: how a quality is judged. listed: by good; opcua: the quality is an OPC UA StatusCode "
        "(an integer, or {Code, Symbol}): Good severity is a good read, Uncertain and Bad failed reads (good empty)",
    )


@dataclass(frozen=True)
class MappingCfg:
    columns: dict[str, str] = _f({}, "channel -> payload key / table column; empty = the bundle's training mapping")
    ignored_keys: list[str] = _f(
        [],
        "run: keys of a telemetry payload's `values` (Kepware's tag keys, Neuron's tags, Sparkplug's metric names) "
        "that are not channels and are dropped (a gateway publishing more tags than the model reads, e.g. "
        "[status_text, alarm_code]); an entry with `*` is a pattern, `*` any run of characters (Gearbox/*; * drops "
        "every key that is not a channel's, misspelt ones too); any other unknown key rejects the message",
    )
    tag_pattern: str | None = _f(
        None,
        "run, ingest.batch_format: kepware: a regular expression whose named groups `turbine` and `key` take a tag "
        "id apart; null = Kepware's <channel>.<device>[.<group>...].<tag>, the device the turbine and the rest the "
        "key: [^.]+\\.(?P<turbine>[^.]+)\\.(?P<key>.+)",
    )
    turbine_id_col: str | None = _f(
        None, "replay: column of the turbine id; null = the training table's (the bundle's table_identifiers)"
    )
    turbine_id_from_file: str | None = _f(
        None,
        "replay: a regular expression taking the turbine id from each file's name (its group, or the whole match), "
        "for per-turbine files without an id column; null = the training table's; set it or turbine_id_col",
    )
    time_col: str | None = _f(
        None,
        "replay: column of the timestamp (ISO-8601 with offset, or epoch seconds); null = the training table's",
    )
    time_format: str | None = _f(
        None,
        "replay: strptime format of the stamps, e.g. '%d.%m.%Y %H:%M' for day-first exports; epoch_ms = every stamp "
        "in epoch milliseconds; ISO8601 = ISO-8601 or epoch seconds, whatever the training table's; null = the "
        "training table's (none there: ISO8601)",
    )
    naive_timezone: str | None = _f(
        None,
        "replay: IANA zone of stamps without offset (times a DST change skips are refused; the hour it repeats is "
        "placed by each turbine's row order); null = the training table's (the bundle's table_identifiers; none "
        "there: such stamps are refused)",
    )
    csv: CsvMappingCfg = _f(CsvMappingCfg(), "replay: how the table's CSV is written")
    time_weighted: list[str] | None = _f(
        None,
        "channels this source sends as instantaneous readings, each holding until the next (report by exception: "
        "Sparkplug, OPC UA or Kepware on data change, a historian's raw values): a step is the time-weighted mean of "
        "the values holding over it, as a historian's step averages are; each must hold in the bundle "
        "(pipeline_spec.hold_s) and be binned by its mean; null = the bundle's (pipeline_spec.aggregation time), "
        "[] = none",
    )
    opcua_turbine: str = _f(
        "DataSetWriterName",
        "run, ingest.batch_format: opcua: the DataSetMessage header field that names the turbine (one DataSetWriter "
        "per turbine): DataSetWriterName, DataSetWriterId (OPC Publisher 2.8 writes no name), PublisherId, "
        "WriterGroupName or DataSetWriterGroup",
    )
    tag_payload: TagPayloadCfg = _f(
        TagPayloadCfg(), "run: the keys of a tag's payload (topics.telemetry_tag, ingest.telemetry_format: tags)"
    )


@dataclass(frozen=True)
class RuntimeConfig:
    site: str = _f("site", "site id, fills {site} in topics")
    gateway: str = _f("gateway", "gateway id, fills {gateway} in topics")
    log_level: str = _f("INFO", "DEBUG, INFO, WARNING or ERROR")
    broker: BrokerCfg = _f(BrokerCfg(), "MQTT broker connection")
    topics: TopicsCfg = _f(TopicsCfg(), "topic templates")
    ingest: IngestCfg = _f(IngestCfg(), "telemetry acceptance and binning")
    queues: QueuesCfg = _f(QueuesCfg(), "queue bounds")
    compute: ComputeCfg = _f(ComputeCfg(), "inference threads and batching")
    health: HealthCfg = _f(HealthCfg(), "metrics, health endpoint and status refresh")
    mapping: MappingCfg = _f(MappingCfg(), "payload keys / table columns of the bundle's channels")
    state: StateCfg = _f(StateCfg(), "state persistence across restarts")


def _is_dc(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats. Returns the typed value."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for tp_ in inner:  # the first that takes it (str | int | bool: a quality of any of those types)
            try:
                return _coerce(value, tp_, key)
            except ConfigError:
                if len(inner) == 1:
                    raise
        names = " or ".join(getattr(a, "__name__", str(a)) for a in inner)
        raise ConfigError(f"{key}: expected {names}, got {type(value).__name__} {value!r}")
    if _is_dc(tp):
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return {_coerce(k, args[0], key): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (str, int, float, bool) and (type(value) is tp):
        return value
    raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown keys {unknown}; allowed keys: {allowed}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """A deep copy of `data` with SCADA_RT_A__B=value overrides applied (values parsed as YAML)."""
    out = yaml.safe_load(yaml.safe_dump(data)) if data else {}
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        cls: Any = RuntimeConfig
        node = out
        for i, part in enumerate(path):
            names = [f.name for f in dataclasses.fields(cls)] if _is_dc(cls) else []
            if part not in names:
                where = ".".join(path[:i]) or "config"
                raise ConfigError(f"environment {name}: unknown key {part!r} in {where}; allowed keys: {names}")
            if i == len(path) - 1:
                try:
                    node[part] = yaml.safe_load(environ[name]) if environ[name] != "" else None
                except yaml.YAMLError as e:  # a pattern starting with '[' or '{', say: quote it
                    first = str(e).splitlines()[0]
                    raise ConfigError(f"environment {name}: not a YAML value ({type(e).__name__}: {first}); quote "
                                      f"it, e.g. {name}='\"...\"'") from None  # fmt: skip
            else:
                cls = typing.get_type_hints(cls)[part]
                if node.get(part) is None:
                    node[part] = {}
                if not isinstance(node[part], dict):
                    raise ConfigError(f"environment {name}: {'.'.join(path[: i + 1])} is not a section")
                node = node[part]
    return out


def _problems(c: RuntimeConfig) -> list[str]:
    zones = [(c.mapping.naive_timezone, "mapping.naive_timezone"), (c.ingest.naive_timezone, "ingest.naive_timezone")]
    p: list[str] = [z for z in [zone_problem(name, key) for name, key in zones] if z]
    m = c.mapping
    if m.turbine_id_col is not None and m.turbine_id_from_file is not None:
        p.append("mapping: set turbine_id_col or turbine_id_from_file, not both")
    if any(not isinstance(k, str) or not k for k in m.ignored_keys) or len(set(m.ignored_keys)) < len(m.ignored_keys):
        p.append(f"mapping.ignored_keys: distinct non-empty payload keys expected, got {m.ignored_keys!r}")
    mapped = sorted(set(m.ignored_keys) & set(m.columns.values()))
    if mapped:
        p.append(f"mapping.ignored_keys: {mapped} are channels' keys in mapping.columns; a key is read or ignored")
    if m.time_format != ISO_STAMPS:
        p += [z for z in [time_format_problem(m.time_format, "mapping.time_format")] if z]
    if m.turbine_id_from_file is not None:
        p += [z for z in [id_pattern_problem(m.turbine_id_from_file, "mapping.turbine_id_from_file")] if z]
    d = c.mapping.csv  # each part set here (replay checks the whole, with the training table's parts)
    dialect = dialect_problem(";" if d.delimiter is None else d.delimiter, "." if d.decimal is None else d.decimal,
                              0 if d.skip_lines is None else d.skip_lines, "mapping.csv",
                              "utf-8" if d.encoding is None else d.encoding)  # fmt: skip
    p += [dialect] if dialect else []
    url = urlparse(c.broker.url)
    if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
        p.append(f"broker.url: expected mqtt://host:port or mqtts://host:port, got {c.broker.url!r}")
    tls_files = [c.broker.tls.ca_file, c.broker.tls.cert_file, c.broker.tls.key_file]
    if url.scheme == "mqtt" and any(tls_files):
        p.append("broker.tls: TLS files are set but broker.url is mqtt://; use mqtts:// to enable TLS")
    if (c.broker.tls.cert_file is None) != (c.broker.tls.key_file is None):
        p.append("broker.tls: cert_file and key_file go together (mutual TLS)")
    if (c.broker.password is not None or c.broker.password_file is not None) and not c.broker.username:
        p.append("broker.password: a password needs broker.username")
    if c.broker.password is not None and c.broker.password_file is not None:
        p.append("broker.password: give password or password_file, not both")
    for key, v, lo in (
        ("broker.keepalive_s", c.broker.keepalive_s, 5),
        ("broker.session_expiry_s", c.broker.session_expiry_s, 0),
        ("broker.reconnect_min_s", c.broker.reconnect_min_s, 1),
        ("ingest.max_payload_bytes", c.ingest.max_payload_bytes, 64),
        ("ingest.max_batch_payload_bytes", c.ingest.max_batch_payload_bytes, 64),
        ("ingest.max_turbines", c.ingest.max_turbines, 1),
        ("ingest.max_values_per_stamp", c.ingest.max_values_per_stamp, 1),
        ("queues.inbound", c.queues.inbound, 1),
        ("queues.outbound", c.queues.outbound, 1),
        ("queues.receive_maximum", c.queues.receive_maximum, 1),
        ("queues.publish_backlog", c.queues.publish_backlog, 1),
        ("compute.intra_op_threads", c.compute.intra_op_threads, 1),
        ("compute.inter_op_threads", c.compute.inter_op_threads, 1),
        ("compute.max_batch", c.compute.max_batch, 1),
        ("health.metrics_port", c.health.metrics_port, 0),
        ("health.drift_window", c.health.drift_window, 10),
    ):
        if v < lo:
            p.append(f"{key}: must be >= {lo}, got {v}")
    if c.broker.reconnect_max_s < c.broker.reconnect_min_s:
        p.append("broker.reconnect_max_s: must be >= broker.reconnect_min_s")
    if c.queues.outbound > 60000:
        p.append(f"queues.outbound: at most 60000 (MQTT packet ids are 16-bit), got {c.queues.outbound}")
    if c.queues.publish_backlog > c.queues.outbound:
        p.append("queues.publish_backlog: must be <= queues.outbound (the publishes kept while disconnected)")
    if c.queues.receive_maximum > c.queues.inbound:
        p.append("queues.receive_maximum: must be <= queues.inbound, so a broker honouring it never pauses the reads")
    if c.queues.receive_maximum > 65535:
        p.append(f"queues.receive_maximum: at most 65535, got {c.queues.receive_maximum}")
    for key, v in (
        ("ingest.grace_s", c.ingest.grace_s),
        ("ingest.max_future_s", c.ingest.max_future_s),
        ("ingest.max_past_s", c.ingest.max_past_s),
        ("ingest.sparkplug_history_wait_s", c.ingest.sparkplug_history_wait_s),
        ("compute.tick_s", c.compute.tick_s),
        ("health.stall_s", c.health.stall_s),
        ("health.status_interval_s", c.health.status_interval_s),
        ("state.save_interval_s", c.state.save_interval_s),
    ):
        if not v >= 0 or v == float("inf"):
            p.append(f"{key}: must be a finite number >= 0, got {v}")
    if c.ingest.epoch_unit not in EPOCH_UNITS:
        p.append(f"ingest.epoch_unit: one of {', '.join(EPOCH_UNITS)}; got {c.ingest.epoch_unit!r}")
    tags = tag_pattern_problem(c.mapping.tag_pattern)
    if tags is not None:
        p.append(tags)
    elif c.mapping.tag_pattern is not None and c.ingest.batch_format != "kepware":
        p.append("mapping.tag_pattern: reads the tag ids of ingest.batch_format: kepware, which is not set: set it, "
                 "or remove mapping.tag_pattern")  # fmt: skip
    if m.opcua_turbine not in TURBINE_FIELDS:
        p.append(f"mapping.opcua_turbine: one of {', '.join(TURBINE_FIELDS)}; got {m.opcua_turbine!r}")
    elif m.opcua_turbine != MappingCfg().opcua_turbine and c.ingest.batch_format != "opcua":
        p.append("mapping.opcua_turbine: names the turbine of ingest.batch_format: opcua messages, which is not set: "
                 "set it, or remove opcua_turbine")  # fmt: skip
    if c.ingest.batch_format not in BATCH_FORMATS:
        p.append(f"ingest.batch_format: one of {', '.join(BATCH_FORMATS)}; got {c.ingest.batch_format!r}")
    elif c.ingest.batch_format != "lines" and c.topics.telemetry_batch is None:
        p.append(f"ingest.batch_format: {c.ingest.batch_format} is the form of topics.telemetry_batch, which is "
                 "not set: set it (e.g. v1/gateway/telemetry) or remove ingest.batch_format")  # fmt: skip
    if c.ingest.telemetry_format not in TELEMETRY_FORMATS:
        p.append(f"ingest.telemetry_format: one of {', '.join(TELEMETRY_FORMATS)}; got {c.ingest.telemetry_format!r}")
    if c.compute.engine not in ("auto", "stream", "window"):
        p.append(f"compute.engine: one of auto, stream, window; got {c.compute.engine!r}")
    if c.compute.tick_s <= 0 or c.health.status_interval_s <= 0:
        p.append("compute.tick_s and health.status_interval_s must be > 0")
    if c.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        p.append(f"log_level: one of DEBUG, INFO, WARNING, ERROR; got {c.log_level!r}")
    for key, v in (("site", c.site), ("gateway", c.gateway)):
        if not v or any(ch in v for ch in "+#/"):
            p.append(f"{key}: must be non-empty without '+', '#', '/', got {v!r}")
    if c.topics.score_batch_bytes < 8192:
        p.append(f"topics.score_batch_bytes: must be >= 8192 (a score record is a few kB), got "
                 f"{c.topics.score_batch_bytes}")  # fmt: skip
    before = len(p)
    not_templates = ("score_batch_bytes", _SPB, _HOST, _TAG)
    for name in [f.name for f in dataclasses.fields(TopicsCfg) if f.name not in not_templates]:
        tpl = getattr(c.topics, name)
        if tpl is None:  # score_batch or telemetry_batch off
            continue
        if name in ("score_batch", "telemetry_batch"):
            ok, rule = "{turbine}" not in tpl, "one topic for the whole fleet, no {turbine}"
        else:
            need = "{gateway}" if name in ("status", "errors") else "{turbine}"
            ok, rule = need in tpl, f"template must contain {need}"
        if not ok or "+" in tpl or "#" in tpl:
            p.append(f"topics.{name}: {rule} and no wildcards, got {tpl!r}")
        try:
            tpl.format(site="s", turbine="t", gateway="g")
        except (KeyError, IndexError, ValueError) as e:
            p.append(f"topics.{name}: only {{site}}, {{turbine}}, {{gateway}} may be used ({e!r})")
    tel = c.topics.telemetry.split("/")
    if "{turbine}" not in tel:
        p.append("topics.telemetry: {turbine} must be a whole topic level, e.g. scada/{site}/{turbine}/telemetry")
    elif c.topics.telemetry_batch is not None and len(p) == before:  # every template is well-formed
        p += _batch_topic_problems(c)
    if c.topics.sparkplug_group is not None:
        p += _sparkplug_problems(c, well_formed=len(p) == before)
    elif c.topics.sparkplug_host_id is not None:
        p.append(f"topics.{_HOST}: a Sparkplug host application reads a group: set topics.{_SPB} too")
    if c.ingest.sparkplug_history_wait_s and c.topics.sparkplug_group is None:
        p.append(f"ingest.sparkplug_history_wait_s: waits after Sparkplug deaths: set topics.{_SPB} too")
    return p + _tag_problems(c, well_formed=len(p) == before)


def _overlap(a: str, b: str) -> bool:
    """Whether some topic matches both MQTT filters `a` and `b`."""
    la, lb = a.split("/"), b.split("/")
    for x, y in zip(la, lb):
        if x == "#" or y == "#":
            return True
        if x != y and x != "+" and y != "+":
            return False
    longer = la if len(la) > len(lb) else lb
    return len(la) == len(lb) or longer[min(len(la), len(lb))] == "#"


def _clashes(c: RuntimeConfig, filters: list[str], names: tuple[str, ...]) -> list[str]:
    """The topics among `names` (those set) whose subscription filter some topic of `filters` also matches."""
    return [
        name
        for name in names
        if getattr(c.topics, name) is not None
        and any(_overlap(turbine_topics(getattr(c.topics, name), c.site, c.gateway)[0], f) for f in filters)
    ]


def _batch_topic_problems(c: RuntimeConfig) -> list[str]:
    """topics.telemetry_batch must be a topic of its own: none of the other topics' subscriptions may match it
    (the daemon would route it as per-turbine telemetry, or consume its own output)."""
    topic = c.topics.telemetry_batch.format(site=c.site, gateway=c.gateway)  # type: ignore[union-attr]
    names = ("telemetry", "score", "alert", "alert_state", "status", "errors", "score_batch")
    clash = _clashes(c, [topic], names)
    if clash:
        return [
            f"topics.telemetry_batch: {topic!r} is also a topic of {clash}; give it a topic of its own, e.g. "
            "scada/{site}/{gateway}/telemetry_batch"
        ]
    return []


def _sparkplug_problems(c: RuntimeConfig, well_formed: bool) -> list[str]:
    """topics.sparkplug_group must be a group id (one topic level), and none of the other topics may share a topic
    with the group's Sparkplug subscriptions (`well_formed`: the other templates can be formatted): the daemon
    would read its own output as Sparkplug, or route Sparkplug as other telemetry."""
    try:
        group = c.topics.sparkplug_group.format(site=c.site, gateway=c.gateway)  # type: ignore[union-attr]
    except (KeyError, IndexError, ValueError) as e:
        return [f"topics.{_SPB}: only {{site}} and {{gateway}} may be used ({e!r})"]
    if not group or any(ch in group for ch in "+#/"):
        return [f"topics.{_SPB}: a Sparkplug group id (one topic level, no '+', '#', '/'), got {group!r}"]
    try:
        host = sparkplug_host(c)
    except (KeyError, IndexError, ValueError) as e:
        return [f"topics.{_HOST}: only {{site}} and {{gateway}} may be used ({e!r})"]
    if host is not None and (not host or any(ch in host for ch in "+#/")):
        return [f"topics.{_HOST}: a Sparkplug host id (one topic level, no '+', '#', '/'), got {host!r}"]
    if not well_formed:
        return []
    names = ("telemetry", "telemetry_batch", "score", "alert", "alert_state", "status", "errors", "score_batch")
    clash = _clashes(c, _sparkplug_filters(c), names)
    if clash:
        return [f"topics.{_SPB}: the group's Sparkplug topics ({NAMESPACE}/{group}/..." +
                (f", {host_state_topic(host)}" if host is not None else "") +
                f") are also topics of {clash}; give those topics of their own"]  # fmt: skip
    return []


def sparkplug_host(c: RuntimeConfig) -> str | None:
    """topics.sparkplug_host_id with {site} and {gateway} filled in (None: not set)."""
    h = c.topics.sparkplug_host_id
    return None if h is None else h.format(site=c.site, gateway=c.gateway)


def _sparkplug_filters(c: RuntimeConfig) -> list[str]:
    """The Sparkplug topics: those of the group the daemon reads, those of its rebirth requests (NCMD), and its
    host STATE."""
    group = c.topics.sparkplug_group.format(site=c.site, gateway=c.gateway)  # type: ignore[union-attr]
    host = sparkplug_host(c)
    return [*topic_filters(group), command_filter(group), *([host_state_topic(host)] if host is not None else [])]


def _tag_problems(c: RuntimeConfig, well_formed: bool) -> list[str]:
    """topics.telemetry_tag must be a template of per-tag topics whose subscription shares no topic with the
    others' (the daemon would read its own output as telemetry), and mapping.tag_payload's keys distinct, a
    quality key with its good qualities; tag_payload set without per-tag topics is refused as a misconfiguration."""
    t, tpl = c.mapping.tag_payload, c.topics.telemetry_tag
    if tpl is None and c.ingest.telemetry_format != "tags":
        unused = ("mapping.tag_payload: reads topics.telemetry_tag and ingest.telemetry_format: tags, neither of "
                  "which is set: set one or remove tag_payload")  # fmt: skip
        return [unused] if t != TagPayloadCfg() else []
    p = [z for z in [template_problem(tpl)] if z] if tpl is not None else []
    keys = [t.value, t.ts, *([t.quality] if t.quality is not None else []), *t.other_keys]
    if any(not k for k in keys) or len(set(keys)) < len(keys):
        p.append(f"mapping.tag_payload: value, ts, quality and other_keys must be distinct non-empty keys, got {keys}")
    if t.quality_rule not in QUALITY_RULES:
        p.append(f"mapping.tag_payload.quality_rule: one of {', '.join(QUALITY_RULES)}; got {t.quality_rule!r}")
    elif t.quality_rule == "opcua" and (t.quality is None or t.good):
        p.append("mapping.tag_payload: quality_rule opcua reads the StatusCode under quality (e.g. quality: "
                 "StatusCode) by its severity; set quality and leave good empty")  # fmt: skip
    elif t.quality_rule == "listed" and (t.quality is None) != (not t.good):
        p.append("mapping.tag_payload: quality and good go together (the key of a value's quality, and the "
                 "qualities of a good read, e.g. quality: q, good: [192])")  # fmt: skip
    if p or not well_formed or tpl is None:
        return p
    names = ("telemetry", "telemetry_batch", "score", "alert", "alert_state", "status", "errors", "score_batch")
    filt = tag_filter(tpl, c.site, c.gateway)[0]
    clash = _clashes(c, [filt], names)
    if c.topics.sparkplug_group is not None and any(_overlap(filt, f) for f in _sparkplug_filters(c)):
        clash.append(_SPB)
    if clash:
        return [f"topics.telemetry_tag: its subscription {filt!r} also takes the topics of {clash}; give the tags "
                "topics of their own, e.g. uns/{site}/{turbine}/scada/{key}"]  # fmt: skip
    return []


def validate(cfg: RuntimeConfig) -> RuntimeConfig:
    """Check the cross-field invariants; raise one ConfigError listing every problem."""
    problems = _problems(cfg)
    if problems:
        raise ConfigError("invalid runtime config:\n  " + "\n  ".join(problems))
    return cfg


def daemon_config_from_dict(data: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None) -> RuntimeConfig:
    """Plain data (+ environment overrides) -> validated RuntimeConfig."""
    merged = _env_overrides(dict(data or {}), environ or {})
    return validate(_build(RuntimeConfig, merged, ""))


def load_daemon_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> RuntimeConfig:
    """Read runtime.yaml (None = defaults only), apply `environ` overrides, validate."""
    data: Any = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"runtime config {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"runtime config {p}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"runtime config {p}: expected a mapping at the top level, got {type(data).__name__}")
    return daemon_config_from_dict(data, environ)


def redacted(cfg: RuntimeConfig) -> dict[str, Any]:
    """The config as plain data with the password hidden."""
    d = dataclasses.asdict(cfg)
    if d["broker"]["password"] is not None:
        d["broker"]["password"] = "***"
    return d


def describe() -> str:
    """Every key with its default and description, for `--help` and the deploy guide."""
    lines: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if _is_dc(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
                lines.append(f"{prefix}{f.name} = {default!r}: {f.metadata['doc']}")

    walk(RuntimeConfig, "")
    return "\n".join(lines)
