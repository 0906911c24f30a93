"""Prometheus metrics of this process (GET /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("productflo_connections", "Open client connections on this process")
MESSAGES_RECEIVED = Counter(
    "productflo_messages_received_total", "Inbound frames received", ["transport"]
)
MESSAGES_REJECTED = Counter(
    "productflo_messages_rejected_total", "Inbound messages refused, by error code", ["error_code"]
)
EVENTS_APPENDED = Counter("productflo_events_appended_total", "Events committed to the log")
APPEND_BATCH_SIZE = Histogram(
    "productflo_append_batch_events",
    "Events per group-commit transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
APPEND_SECONDS = Histogram(
    "productflo_append_transaction_seconds", "Duration of one group-commit transaction"
)
SLOW_CLIENTS_DROPPED = Counter(
    "productflo_slow_clients_closed_total", "Connections closed 1013 for not keeping up"
)
AI_ANSWERS = Counter(
    "productflo_ai_answers_total", "AI requests answered, by code and outcome", ["code", "outcome"]
)
AI_SECONDS = Histogram(
    "productflo_ai_answer_seconds",
    "From taking an AI request up to storing its answer",
    ["code"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120),
)
