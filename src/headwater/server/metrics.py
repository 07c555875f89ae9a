"""Prometheus metrics of a serve process (``/metrics``), through prometheus-client.

One registry per process; the names follow Prometheus conventions so dashboards can be
written against them: runs by pipeline and final state, trigger fires and trigger error
state, event → run start latency, rows published, queue depth.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

RUNS = Counter("headwater_runs_total", "Runs finished by this server", ["pipeline", "status"],
               registry=REGISTRY)
TRIGGER_FIRES = Counter("headwater_trigger_fires_total", "Fires that queued a run",
                        ["pipeline", "kind"], registry=REGISTRY)
TRIGGER_ERRORS = Gauge("headwater_trigger_error", "1 while a trigger is in an error state",
                       ["pipeline", "kind"], registry=REGISTRY)
EVENT_TO_START = Histogram(
    "headwater_event_to_start_seconds", "From the event (file, tick, message) to run start",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
    registry=REGISTRY)
ROWS_PUBLISHED = Counter("headwater_rows_published_total", "Rows added to datasets",
                         ["dataset"], registry=REGISTRY)
QUEUE_DEPTH = Gauge("headwater_queue_depth", "Runs waiting in the queue", registry=REGISTRY)
