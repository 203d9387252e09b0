"""The telemetry decoder's cost per sample in the forms gateways publish, against one ISO-stamped message per
sample measured in the same run.

    taskset -c 0 python bench/bench_decode.py [--channels 13] [--samples 20000] [--array 100]

Forms (CPU seconds of this process; pin it to one core):
  iso            one message per sample, `{"ts": "2024-...+00:00", "values": {...}}` (the baseline)
  epoch-s        the same with `ts` in epoch seconds
  thingsboard    `ts` in epoch milliseconds (`ingest.epoch_unit: ms`) and two tags beside the channels
                 (`mapping.ignored_keys`), as ThingsBoard's device API writes them
  array          `--array` ThingsBoard documents per message, as a JSON array on the turbine's topic
  batch-lines    `--array` samples per message as JSON lines on `topics.telemetry_batch`
  gateway        `--array` samples per message in ThingsBoard's gateway form (`ingest.batch_format: devices`):
                 `{"WT01": [...], "WT02": [...], ...}`, 10 turbines of `--array` / 10 documents each
  text-values    thingsboard with every value a string (`"512.25"`, `ingest.numeric_strings`)
  kepware        `--array` samples per message in Kepware IoT Gateway's standard template (`ingest.batch_format:
                 kepware`): one element `{"id": "Farm.WT01.ch00", "v": ..., "q": true, "t": ms}` per value and
                 one per tag (`status_text`, `alarm_code`), grouped back into samples by turbine and stamp
  neuron         one EMQX Neuron message per sample, values format (`ingest.batch_format: neuron`)
  sparkplug      one Sparkplug B DDATA per sample (`topics.sparkplug_group`), as Ignition publishes it: each value
                 a Double metric by alias alone (its birth, decoded first, gave the names), and the two tags
  uns            one message per value on a topic per tag (`topics.telemetry_tag`), `uns/site/WT01/ch00` with
                 `{"value": ..., "timestamp": ms}`, and one per tag: a sample's values cost that many messages
  tag-objects    one message per sample on the turbine's topic as Azure IoT Operations' connector for OPC UA writes
                 it (`ingest.telemetry_format: tags`): `{"ch00": {"SourceTimestamp": ISO, "Value": ...}, ...}`,
                 every tag of a message with one stamp
  tag-objects-apart  the same with each tag's own stamp (a millisecond apart), as the connector stamps each data
                 point when it was read: each tag is a sample of its own (figures per table row, as for the rest)
  opcua          `--array` samples per message as OPC Publisher's PubSub JSON NetworkMessages (`ingest.batch_format:
                 opcua`): a DataSetMessage per sample, each value a DataValue `{"Value", "SourceTimestamp",
                 "ServerTimestamp"}`, and the two tags (`mapping.ignored_keys`)
  hostile-array  one 4 MiB array of refused elements (`[1,1,...]`): what one bad message costs the loop
Printed: microseconds per sample (per refused element for the hostile array), the least of `--repeat` runs, and
the ratio to `iso`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scada_tcn.runtime.opcua_pubsub import PubSubDecoder  # noqa: E402
from scada_tcn.runtime.sparkplug import SparkplugDecoder  # noqa: E402
from scada_tcn.runtime.tag_topics import TagObjectDecoder, TagPayload, TagTopicDecoder  # noqa: E402
from scada_tcn.runtime.telemetry import BatchDecode, Sample, TelemetryDecoder  # noqa: E402
from tests.sparkplug_messages import Payload, metric  # noqa: E402  (Google's protobuf writes the payloads)

T0 = 1_717_200_000  # 2024-06-01T00:00:00Z, the decoder's "now"
TAGS = {"status_text": "RUN", "alarm_code": 0}


def _decoder(channels: list[str], unit: str = "s", text: bool = False) -> TelemetryDecoder:
    return TelemetryDecoder(channels, {c: c for c in channels}, 2, 65536, 300.0, 1e9, [],
                            epoch_unit=unit, ignored_keys=list(TAGS), numeric_strings=text)  # fmt: skip


def _docs(channels: list[str], n: int, rng: np.random.Generator) -> list[dict]:
    """n samples of one turbine, 10 minutes apart, ending now: every channel a number with 2 decimals."""
    values = np.round(rng.normal(500.0, 300.0, (n, len(channels))), 2)
    return [{"ts": T0 - 600 * (n - i), "values": dict(zip(channels, row.tolist()))} for i, row in enumerate(values)]


def _iso(secs: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(secs))


def _cpu(fn: Callable[[], int]) -> tuple[float, int]:
    """(CPU seconds, samples) of `fn`, which returns how many samples or elements it decoded."""
    t = time.process_time()
    n = fn()
    return time.process_time() - t, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, default=13)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--array", type=int, default=100, help="documents per array or batch message")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each form; the least CPU time is kept")
    args = ap.parse_args()
    channels = [f"ch{i:02d}" for i in range(args.channels)]
    docs = _docs(channels, args.samples, np.random.default_rng(0))
    now = T0 * 10**9
    topic = "scada/site/WT01/telemetry"
    secs, ms, text = _decoder(channels), _decoder(channels, "ms"), _decoder(channels, "ms", True)

    iso = [json.dumps({"ts": _iso(d["ts"]), "values": d["values"]}).encode() for d in docs]
    epoch = [json.dumps(d).encode() for d in docs]
    tb_docs = [{"ts": d["ts"] * 1000, "values": {**TAGS, **d["values"]}} for d in docs]
    tb = [json.dumps(d).encode() for d in tb_docs]
    k = args.array
    arrays = [json.dumps(tb_docs[i : i + k]).encode() for i in range(0, len(tb_docs), k)]
    lines = [b"\n".join(json.dumps({"turbine": "WT01", **d}).encode() for d in docs[i : i + k])
             for i in range(0, len(docs), k)]  # fmt: skip
    gateway = [json.dumps({f"WT{j:02d}": tb_docs[i + j : i + k : 10] for j in range(10)}).encode()
               for i in range(0, len(tb_docs), k)]  # fmt: skip
    as_text = [json.dumps({"ts": d["ts"], "values": {c: repr(v) if isinstance(v, float) else v
                                                     for c, v in d["values"].items()}}).encode()
               for d in tb_docs]  # fmt: skip
    kepware = [json.dumps({"timestamp": T0 * 1000, "values": [
        {"id": f"Farm.WT01.{c}", "v": v, "q": True, "t": d["ts"]} for d in tb_docs[i : i + k]
        for c, v in d["values"].items()]}).encode() for i in range(0, len(tb_docs), k)]  # fmt: skip
    neuron = [json.dumps({"timestamp": d["ts"], "node": "WT01", "group": "scada", "values": d["values"],
                          "errors": {}, "metas": {}}).encode() for d in tb_docs]  # fmt: skip
    hostile = b"[" + b",".join([b"1"] * ((4 << 20) // 2 - 1)) + b"]"
    spb = SparkplugDecoder(ms, "farm")
    birth = Payload(timestamp=T0 * 1000)
    for n, c in enumerate([*channels, *TAGS], 1):
        metric(birth, c, 1.0 if c in channels else str(TAGS[c]), "Double" if c in channels else "String", alias=n)
    assert not spb.decode("spBv1.0/farm/DBIRTH/gw/WT01", birth.SerializeToString(), now).rejected  # type: ignore[union-attr]
    sparkplug = []
    for d in tb_docs:
        p = Payload(timestamp=d["ts"] + 40)
        for n, c in enumerate([*channels, *TAGS], 1):
            v = d["values"][c] if c in channels else str(TAGS[c])
            metric(p, None, v, "Double" if c in channels else "String", alias=n, ts=d["ts"], typed=False)
        sparkplug.append(p.SerializeToString())

    uns = TagTopicDecoder(TagPayload(ms), "uns/{site}/{turbine}/{key}", "site", "gw")
    per_tag = [(f"uns/site/WT01/{c}", json.dumps({"value": v, "timestamp": d["ts"]}).encode())
               for d in tb_docs for c, v in d["values"].items()]  # fmt: skip

    aio = TagObjectDecoder(TagPayload(secs, "Value", "SourceTimestamp"))
    objects = [json.dumps({c: {"SourceTimestamp": _iso(d["ts"]), "Value": v} for c, v in d["values"].items()}).encode()
               for d in docs]  # fmt: skip
    apart = [json.dumps({c: {"SourceTimestamp": _iso(d["ts"])[:19] + f".{k:03d}+00:00", "Value": v}
                         for k, (c, v) in enumerate(d["values"].items())}).encode() for d in docs]  # fmt: skip

    opcua = PubSubDecoder(ms)
    networks = [json.dumps({"MessageId": str(i), "MessageType": "ua-data", "PublisherId": "opcpub", "Messages": [
        {"DataSetWriterName": "WT01", "SequenceNumber": i + j, "MessageType": "ua-deltaframe", "Timestamp":
         _iso(d["ts"] // 1000), "Payload": {c: {"Value": v, "SourceTimestamp": _iso(d["ts"] // 1000), "ServerTimestamp":
                                                _iso(d["ts"] // 1000)} for c, v in d["values"].items()}}
        for j, d in enumerate(tb_docs[i : i + k])]}).encode() for i in range(0, len(tb_docs), k)]  # fmt: skip

    def tags() -> int:
        got = [uns.decode(t, p, now) for t, p in per_tag]
        assert all(isinstance(g, BatchDecode) and not g.rejected for g in got)
        return len(tb_docs)  # the samples those values make

    def each(decoder: TelemetryDecoder, payloads: list[bytes]) -> int:
        got = [decoder.decode(topic, p, now) for p in payloads]
        assert all(isinstance(g, Sample) for g in got)
        return len(got)

    def many(decode: Callable[[bytes], Sample | BatchDecode | object], payloads: list[bytes]) -> int:
        got = [decode(p) for p in payloads]
        assert all(isinstance(g, BatchDecode) and not g.rejected for g in got)
        return sum(len(g.samples) for g in got)

    def rows(decode: Callable[[bytes], BatchDecode | object], payloads: list[bytes]) -> int:
        """`many` counted by the table rows the messages hold (one each), whatever samples their stamps make."""
        many(decode, payloads)
        return len(payloads)

    def refused() -> int:
        got = ms.decode(topic, hostile, now)
        assert isinstance(got, BatchDecode) and not got.samples
        return len(got.rejected)

    runs = {
        "iso": lambda: each(secs, iso),
        "epoch-s": lambda: each(secs, epoch),
        "thingsboard": lambda: each(ms, tb),
        "array": lambda: many(lambda p: ms.decode(topic, p, now), arrays),
        "batch-lines": lambda: many(lambda p: secs.decode_batch(p, now), lines),
        "gateway": lambda: many(lambda p: ms.decode_devices(p, now), gateway),
        "text-values": lambda: each(text, as_text),
        "kepware": lambda: many(lambda p: ms.decode_tags(p, now), kepware),
        "neuron": lambda: many(lambda p: ms.decode_neuron(p, now), neuron),
        "sparkplug": lambda: many(lambda p: spb.decode("spBv1.0/farm/DDATA/gw/WT01", p, now), sparkplug),
        "uns": tags,
        "tag-objects": lambda: rows(lambda p: aio.decode(topic, p, now), objects),
        "tag-objects-apart": lambda: rows(lambda p: aio.decode(topic, p, now), apart),
        "opcua": lambda: many(lambda p: opcua.decode(p, now), networks),
        "hostile-array": refused,
    }
    print(
        f"{args.samples} samples of {args.channels} channels; arrays and batches of {k}; one process, CPU time, "
        f"the least of {args.repeat} runs"
    )
    print(f"{'form':<18} {'us/sample':>10} {'ratio':>7}  total")
    base = None
    for name, fn in runs.items():
        fn()  # warm: the parsers' first calls
        cpu, n = min(_cpu(fn) for _ in range(args.repeat))
        us = cpu / n * 1e6
        base = us if base is None else base
        total = f"{cpu:.2f} s for {n:,} " + ("refused elements (4 MiB)" if name == "hostile-array" else "samples")
        print(f"{name:<18} {us:>10.2f} {us / base:>6.2f}x  {total}")


if __name__ == "__main__":
    main()
