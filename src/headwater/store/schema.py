"""The metadata store's tables (SQLAlchemy Core), the single source of the Alembic head.

Runs, step attempts, logs, pipelines with code versions, datasets and their versions,
incremental source state, trigger state and fires. JSON columns hold documents the engine
writes whole (fingerprints, stats); everything queried by value has its own column.
Never import the engine or the server from here.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

pipelines = Table(
    "pipelines",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("code_version", String(64), nullable=False),
    Column("path", Text, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("seq", BigInteger, nullable=False, unique=True),
    Column("pipeline", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("trigger", String(32), nullable=False),
    Column("trigger_info", JSON, nullable=False),
    Column("params", JSON, nullable=False),
    Column("code_version", String(64), nullable=True),
    Column("parent_run_id", String(40), nullable=True),
    Column("from_step", String(200), nullable=True),
    Column("reuse_steps", JSON, nullable=True),
    Column("window_start", DateTime(timezone=True), nullable=True),
    Column("window_end", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("error", Text, nullable=True),
    Column("failed_step", String(200), nullable=True),
    Column("worker", String(200), nullable=True),
    Column("heartbeat_at", DateTime(timezone=True), nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    # the process executing the run: a dead local process is detected at once, not after
    # a lease (store.liveness)
    Column("host", String(200), nullable=True),
    Column("pid", Integer, nullable=True),
    Index("ix_runs_pipeline_seq", "pipeline", "seq"),
    Index("ix_runs_status", "status"),
    Index("ix_runs_status_seq", "status", "seq"),  # claims: oldest queued run first
)

step_runs = Table(
    "step_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(40), ForeignKey("runs.id"), nullable=False),
    Column("step_id", String(200), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("seconds", Float, nullable=True),
    Column("rows_in", BigInteger, nullable=True),
    Column("rows_out", BigInteger, nullable=True),
    Column("bytes", BigInteger, nullable=True),
    Column("error", Text, nullable=True),
    Column("output", JSON, nullable=True),
    Index("ix_step_runs_run", "run_id", "step_id"),
)

logs = Table(
    "logs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(40), nullable=False),
    Column("step_id", String(200), nullable=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("level", String(10), nullable=False),
    Column("message", Text, nullable=False),
    Column("fields", JSON, nullable=True),
    Index("ix_logs_run", "run_id", "id"),
)

datasets = Table(
    "datasets",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("uri", Text, nullable=False),
    Column("pipeline", String(200), nullable=True),
    Column("key", JSON, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

dataset_versions = Table(
    "dataset_versions",
    metadata,
    Column("dataset", String(200), ForeignKey("datasets.name"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("delta_version", BigInteger, nullable=False),
    Column("run_id", String(40), nullable=True),
    Column("pipeline", String(200), nullable=True),
    Column("step_id", String(200), nullable=True),
    Column("code_version", String(64), nullable=True),
    Column("trigger", String(32), nullable=True),
    Column("mode", String(16), nullable=False),
    Column("inputs", JSON, nullable=False),
    Column("sources", JSON, nullable=False),
    Column("rows_added", BigInteger, nullable=False),
    Column("rows_removed", BigInteger, nullable=False),
    Column("rows_total", BigInteger, nullable=False),
    Column("schema", JSON, nullable=False),
    Column("stats", JSON, nullable=True),
    Column("drift", JSON, nullable=True),
    Column("notes", JSON, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("dataset", "delta_version", name="uq_dataset_delta_version"),
    Index("ix_dataset_versions_created", "created_at"),  # the dataset trigger's poll
)

incremental_state = Table(
    "incremental_state",
    metadata,
    Column("pipeline", String(200), primary_key=True),
    Column("step_id", String(200), primary_key=True),
    Column("key", String(1000), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("run_id", String(40), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

trigger_state = Table(
    "trigger_state",
    metadata,
    Column("pipeline", String(200), primary_key=True),
    Column("trigger_index", Integer, primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("cursor", JSON, nullable=True),
    Column("last_fired_at", DateTime(timezone=True), nullable=True),
    Column("next_fire_at", DateTime(timezone=True), nullable=True),
    Column("error", Text, nullable=True),
    Column("error_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

trigger_fires = Table(
    "trigger_fires",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pipeline", String(200), nullable=False),
    Column("trigger_index", Integer, nullable=True),
    Column("kind", String(32), nullable=False),
    Column("dedupe_key", String(500), nullable=True, unique=True),
    Column("fired_at", DateTime(timezone=True), nullable=False),
    Column("event_at", DateTime(timezone=True), nullable=True),
    Column("info", JSON, nullable=False),
    Column("run_id", String(40), nullable=True),
    Index("ix_trigger_fires_pipeline", "pipeline", "id"),
)

waits = Table(
    "waits",
    metadata,
    Column("token", String(64), primary_key=True),
    Column("run_id", String(40), nullable=False),
    Column("step_id", String(200), nullable=False),
    Column("kind", String(16), nullable=False),  # poll | callback
    Column("status", String(16), nullable=False),  # waiting | done | failed | resumed
    Column("spec", JSON, nullable=False),
    Column("result", JSON, nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=True),
    Column("deadline", DateTime(timezone=True), nullable=True),
    Column("last_status", Text, nullable=True),
    Index("ix_waits_status_due", "status", "due_at"),
    Index("ix_waits_run", "run_id"),
)

run_locks = Table(
    "run_locks",
    metadata,
    # one row per held lock ("pipeline:NAME"); its holder's liveness is its run row
    Column("name", String(300), primary_key=True),
    Column("run_id", String(40), nullable=False),
    Column("acquired_at", DateTime(timezone=True), nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("hash", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("name", String(200), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked", Boolean, nullable=False, default=False),
)
"""Tokens of ``headwater token create``: only a SHA-256 of each is kept."""

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(400), nullable=False),
    Column("detail", JSON, nullable=True),
    Index("ix_audit_log_ts", "ts"),
)
"""Every state-changing request of the API and the UI: who did what to what."""

deployments = Table(
    "deployments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pipeline", String(200), nullable=False),
    Column("env", String(100), nullable=True),
    Column("code_version", String(64), nullable=True),
    Column("files", JSON, nullable=False),
    Column("triggers", JSON, nullable=False),
    Column("removed", Boolean, nullable=False, default=False),
    Column("deployed_at", DateTime(timezone=True), nullable=False),
    Index("ix_deployments_pipeline", "pipeline", "id"),
)
"""What ``headwater deploy`` recorded: one row per pipeline per deploy (newest wins)."""
