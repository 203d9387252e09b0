"""Prometheus metrics of the edge daemon, on a registry of its own (several daemons can live in one process).

Names (all prefixed `scada_runtime_`): messages_in_total, samples_in_total, rejected_total{reason},
failed_reads_total{channel}, held_values_total{channel}, sparkplug_rebirth_requests_total,
sparkplug_lost_messages_total, sparkplug_birth_samples_dropped_total, late_samples_total,
late_redelivered_samples_total, stamp_full_samples_total, bins_closed_total, scores_published_total{status},
alerts_total{state}, inference_seconds (histogram, one observation per graph batch), inference_batch_windows
(histogram), publish_queue_depth,
inbound_queue_depth, inbound_queue_peak, publish_backpressure_total, publish_overflow_total{kind},
publish_too_large_total{kind}, scores_dropped_total{reason}, alerts_on, score_drift_ks, fleet_waiting_records,
turbines, connected, sparkplug_host_online, connects, receive_maximum_exceeded_total, connect_failures_total{reason},
loop_heartbeat_age_seconds, last_message_timestamp_seconds. Every rejected or dropped message is counted here
with a reason; nothing is dropped without a counter.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["RuntimeMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class RuntimeMetrics:
    """All counters and gauges of one daemon; `render()` gives the text exposition format."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = "scada_runtime_"
        self.messages_in = Counter(p + "messages_in", "telemetry messages received", registry=r)
        self.samples_in = Counter(
            p + "samples_in", "telemetry samples admitted (a message, or a line of a batched one)", registry=r
        )
        self.rejected = Counter(
            p + "rejected", "messages (or lines of a batched message) rejected, by reason", ["reason"], registry=r
        )
        self.failed_reads = Counter(
            p + "failed_reads",
            "values the source said it could not read (Kepware's q false, Neuron's errors, Sparkplug's Quality), "
            "by channel: taken as missing",
            ["channel"],
            registry=r,
        )
        self.held_values = Counter(
            p + "held_values",
            "steps in which a report-by-exception channel (the bundle's hold_s) sent nothing and took its last value, "
            "by channel",
            ["channel"],
            registry=r,
        )
        self.rebirths = Counter(
            p + "sparkplug_rebirth_requests",
            "Sparkplug edge nodes asked to publish their births again (their data named an alias no birth gave: "
            "the daemon started after them, or a birth was lost)",
            registry=r,
        )
        self.sparkplug_lost = Counter(
            p + "sparkplug_lost_messages",
            "Sparkplug messages that the edge nodes' sequence numbers say never arrived (Sparkplug publishes data at "
            "QoS 0: a broker, a link or a full queue may drop some); their samples are missing",
            registry=r,
        )
        self.births_dropped = Counter(
            p + "sparkplug_birth_samples_dropped",
            "samples of Sparkplug births held back for the history after them (runtime.birth_hold) and dropped: "
            "their turbine died, or the daemon stopped, before its data reached them",
            registry=r,
        )
        self.late = Counter(p + "late_samples", "samples dropped because their bin had closed", registry=r)
        self.late_redelivered = Counter(
            p + "late_redelivered_samples",
            "of late_samples, those whose message the broker flagged as a redelivery (MQTT DUP: sent again after a "
            "reconnect, most often a sample already in its closed step)",
            registry=r,
        )
        self.stamp_full = Counter(
            p + "stamp_full_samples",
            "samples dropped because each of their channels had ingest.max_values_per_stamp values of their stamp",
            registry=r,
        )
        self.state_samples_dropped = Counter(
            p + "state_samples_dropped",
            "samples acknowledged before a restart, in open bins of a state file set aside, that could not be carried "
            "over (another step or channels, a turbine no longer scored)",
            registry=r,
        )
        self.bins_closed = Counter(p + "bins_closed", "model steps closed over all turbines", registry=r)
        self.scores = Counter(
            p + "scores_published",
            "score-topic records produced, by status (those dropped are in scores_dropped_total too)",
            ["status"],
            registry=r,
        )
        self.alerts = Counter(p + "alerts", "alert transitions, by new state", ["state"], registry=r)
        self.inference = Histogram(
            p + "inference_seconds", "wall time of one batched scoring call", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch = Histogram(
            p + "inference_batch_windows",
            "windows per scoring call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.queue_depth = Gauge(p + "publish_queue_depth", "publishes not yet acknowledged by the broker", registry=r)
        self.inbound_depth = Gauge(p + "inbound_queue_depth", "messages waiting for the processing loop", registry=r)
        self.publish_backpressure = Counter(
            p + "publish_backpressure", "loop iterations that took no telemetry because publishes waited", registry=r
        )
        self.inbound_peak = Gauge(p + "inbound_queue_peak", "most messages ever waiting for the loop", registry=r)
        self.overflow = Counter(
            p + "publish_overflow", "publishes dropped because the queue was full, by kind", ["kind"], registry=r
        )
        self.too_large = Counter(
            p + "publish_too_large",
            "publishes dropped because their packet exceeds the broker's Maximum Packet Size, by kind",
            ["kind"],
            registry=r,
        )
        self.scores_dropped = Counter(
            p + "scores_dropped",
            "score records in the dropped publishes (a batched message holds several), by reason: overflow, "
            "too_large, refused (by the broker: its ACL), state_refused (waiting in a state file set aside), "
            "retired (waiting, of a turbine taken off ingest.turbines)",
            ["reason"],
            registry=r,
        )
        for reason in (
            "overflow",
            "too_large",
            "refused",
            "state_refused",
            "retired",
        ):  # present at 0 from the start, so a rate() sees the first drop
            self.scores_dropped.labels(reason=reason)
        self.alerts_on = Gauge(p + "alerts_on", "turbines whose alert is on", registry=r)
        self.score_drift = Gauge(
            p + "score_drift_ks",
            "KS distance of the recent scores (health.drift_window, all "
            "turbines) from the bundle's validation-score quantiles; NaN before any score",
            registry=r,
        )
        self.turbines = Gauge(p + "turbines", "turbines seen", registry=r)
        self.fleet_waiting = Gauge(
            p + "fleet_waiting_records",
            "fleet-relative: scored steps waiting for every turbine to close their step",
            registry=r,
        )
        self.connected = Gauge(p + "connected", "1 while connected to the broker", registry=r)
        self.data_lag = Gauge(
            p + "data_lag_seconds", "wall clock minus the newest telemetry stamp taken (NaN before any)", registry=r
        )
        self.clock_behind = Gauge(
            p + "clock_behind", "1 while the wall clock is behind the telemetry taken (none is taken)", registry=r
        )
        self.sparkplug_host_online = Gauge(
            p + "sparkplug_host_online",
            "1 while the broker holds this daemon's Sparkplug STATE birth (topics.sparkplug_host_id: acknowledged, "
            "its session standing); 0 otherwise; NaN without topics.sparkplug_host_id",
            registry=r,
        )
        self.connects = Gauge(p + "connects", "successful broker connections since start (1 + reconnects)", registry=r)
        self.receive_maximum_exceeded = Counter(
            p + "receive_maximum_exceeded",
            "QoS 1 messages that arrived while Receive Maximum were already waiting (a broker ignoring it)",
            registry=r,
        )
        self.connect_failures = Counter(
            p + "connect_failures", "refused connections, by reason", ["reason"], registry=r
        )
        self.heartbeat_age = Gauge(
            p + "loop_heartbeat_age_seconds", "seconds since the processing loop last ran", registry=r
        )
        self.channel_silent = Gauge(
            p + "channel_silent",
            "1 while no turbine's samples carry the channel (none in the first steps, or none for hours)",
            ["channel"],
            registry=r,
        )
        self.last_message = Gauge(
            p + "last_message_timestamp_seconds", "wall time of the last processed message", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (for tests and status), 0.0 when absent."""
        v = self.registry.get_sample_value(name, labels or None)
        return 0.0 if v is None else float(v)

    def rejected_by_reason(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for metric in self.rejected.collect():
            for s in metric.samples:
                if s.name.endswith("_total"):
                    out[s.labels["reason"]] = s.value
        return out
