"""The group service's Prometheus metrics (api-delivery.md): log appends, commits accepted and rejected,
deliveries by channel and outcome, mailbox depth, webhook retries, delivery latency.

Labels are kinds, reasons, channels and outcomes only: never a group, endpoint or message.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Seconds from a log append to its delivery (hosted application, mailbox fetch, push, webhook).
DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class DeliveryMetrics:
    """Registered in the gateway's registry (:class:`gateway.metrics.Metrics` holds one)."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.log_appends = Counter(
            "mlsgw_log_appends", "Entries appended to group logs", ["kind"], registry=r
        )
        self.commits = Counter(
            "mlsgw_log_commits",
            "Commits submitted to group logs, by outcome (accepted, or the reason of a rejection)",
            ["outcome"],
            registry=r,
        )
        self.lost_races = Counter(
            "mlsgw_log_lost_races",
            "Hosted operations run again because another writer of the group's log or of the membership's "
            "state won the race, by operation",
            ["operation"],
            registry=r,
        )
        self.deliveries = Counter(
            "mlsgw_deliveries",
            "Items delivered, by channel (hosted, mailbox, inbox, websocket, webhook) and outcome",
            ["channel", "outcome"],
            registry=r,
        )
        self.mailbox_depth = Gauge(
            "mlsgw_mailbox_depth",
            "Items waiting in mailboxes (clients) and inboxes (hosted)",
            ["box"],
            registry=r,
            multiprocess_mode="livemostrecent",  # a store reading (gateway.metrics.STORE_READING)
        )
        self.webhook_retries = Counter("mlsgw_webhook_retries", "Webhook deliveries retried", registry=r)
        self.delivery_latency = Histogram(
            "mlsgw_delivery_latency_seconds",
            "Seconds from a log append to its delivery",
            ["channel"],
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )

    def delivered(self, channel: str, ok: bool, latency_s: float | None = None) -> None:
        self.deliveries.labels(channel, "ok" if ok else "failed").inc()
        if ok and latency_s is not None:
            self.delivery_latency.labels(channel).observe(max(latency_s, 0.0))


__all__ = ["DeliveryMetrics"]
