"""``source: {type: stream}``: a micro-batch of messages, acknowledged after the commit.

The step connects (with backoff), fetches up to ``max_messages``, drops messages its
ledger says are already committed (redeliveries after a crash between commit and
acknowledgement), writes the rest as a Parquet spill in the run folder and malformed ones
as rejected rows, and hands the advanced ledger downstream as incremental state, so it is
committed together with the data. It acknowledges nothing itself: it asks the engine
(``ctx.after_commit``) to acknowledge every message it received once the run has
committed, and to give them back to the broker if the run fails instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import pyarrow.parquet as pq

from headwater.config.models import StreamSource
from headwater.connectors.stream import BrokerSession, broker_adapter, open_session, to_table
from headwater.connectors.streams.base import BrokerAdapter
from headwater.connectors.streams.ledger import Ledger
from headwater.sqltext import text as sql_string
from headwater.steps.base import StepContext, StepOutput, state_key
from headwater.triggers.brokers.base import ConsumerSpec, Delivery

LEDGER_KEY = "ledger"


def run_stream(ctx: StepContext, source: StreamSource) -> StepOutput:
    """See the module docstring."""
    connection = ctx.project.connection(source.connection)
    adapter = broker_adapter(connection, _spec(ctx, source), _nats_stream(source, connection))
    session = open_session(adapter, source.connection)
    on_interrupt = getattr(ctx, "on_interrupt", None)
    if on_interrupt is not None:  # a cancel or timeout closes the link: nothing is acked
        on_interrupt(session.close)
    deliveries: list[Delivery] = []
    try:
        deliveries = session.fetch(source.max_messages, source.max_wait)
        output = _batch(ctx, source, session, deliveries)
    except BaseException:
        _give_back(session, deliveries)
        raise
    ctx.after_commit(lambda: _acknowledge(session, deliveries),
                     lambda: _give_back(session, deliveries))
    return output


def _spec(ctx: StepContext, source: StreamSource) -> ConsumerSpec:
    name = source.consumer or f"headwater-{ctx.pipeline}-{ctx.step_id}"
    return ConsumerSpec(subject=source.target, name=name, prefetch=source.max_messages)


def _nats_stream(source: StreamSource, connection: dict[str, Any]) -> str | None:
    """For NATS ``stream`` names the JetStream stream (``subject`` filters it)."""
    return source.stream if connection.get("type") == "nats" and source.subject else None


def _batch(ctx: StepContext, source: StreamSource, session: BrokerSession,
           deliveries: list[Delivery]) -> StepOutput:
    adapter = session.adapter
    ledger = _ledger(ctx, session)
    fresh = _unique(adapter, [d for d in deliveries if not _committed(adapter, ledger, d)])
    dropped = len(deliveries) - len(fresh)
    if dropped:
        ctx.log(f"{dropped} redelivered message(s) already committed: dropped, and "
                "acknowledged after this run's commit", messages_dropped=dropped)
    where = f"{adapter.where}"
    converted = to_table(fresh, source.format, run_id=ctx.run_id, step_id=ctx.step_id,
                         source=where)
    out = ctx.workdir / f"{ctx.step_id}.parquet"
    pq.write_table(converted.table, out)
    rejected = _write_rejected(ctx, converted.rejected, converted.errors)
    ledger.add(adapter.identity(d) for d in fresh)
    ctx.log(f"{len(fresh)} message(s) from {where} ({converted.table.num_rows} rows, "
            f"{len(converted.errors)} rejected)", messages=len(fresh))
    return StepOutput(
        relation=f"SELECT * FROM read_parquet({sql_string(str(out))})",
        rows=converted.table.num_rows, rejected=rejected,
        sources=[_fingerprint(ctx, source, adapter, fresh)],
        state={state_key(ctx.step_id, LEDGER_KEY): ledger.to_state()},
        info={"messages": len(fresh), "redelivered_dropped": dropped,
              "rows_rejected": len(converted.errors)})


def _ledger(ctx: StepContext, session: BrokerSession) -> Ledger:
    stored = ctx.project.store.state(ctx.pipeline, ctx.step_id).get(LEDGER_KEY)
    ledger = session.adapter.ledger(stored)
    if session.adapter.prune is not None:
        session.call(session.adapter.prune(ledger))
    return ledger


def _committed(adapter: BrokerAdapter, ledger: Ledger, delivery: Delivery) -> bool:
    return adapter.may_be_redelivery(delivery) and ledger.seen(adapter.identity(delivery))


def _unique(adapter: BrokerAdapter, deliveries: list[Delivery]) -> list[Delivery]:
    """One of each message: a batch that outlasts the broker's ack wait can receive a
    message twice (every copy is still acknowledged after the commit)."""
    seen: set[Any] = set()
    out = []
    for delivery in deliveries:
        key = adapter.identity(delivery)
        if key not in seen:
            seen.add(key)
            out.append(delivery)
    return out


def _write_rejected(ctx: StepContext, table: Any, errors: Sequence[str]) -> list[str]:
    if table is None:
        return []
    path = ctx.workdir / f"{ctx.step_id}.rejected.parquet"
    pq.write_table(table, path)
    ctx.log(f"{len(errors)} malformed message(s) quarantined (first: {errors[0]})",
            level="warning", rows_rejected=len(errors))
    return [str(path)]


def _fingerprint(ctx: StepContext, source: StreamSource, adapter: BrokerAdapter,
                 fresh: Sequence[Delivery]) -> dict[str, Any]:
    """What lineage records: broker, target and the message id range taken."""
    ids = [d.message_id for d in fresh]
    return {"step": ctx.step_id, "type": "stream", "connection": source.connection,
            "broker": adapter.consumer.broker, "target": source.target,
            "messages": len(ids), "first": ids[0] if ids else None,
            "last": ids[-1] if ids else None}


def _acknowledge(session: BrokerSession, deliveries: Sequence[Delivery]) -> None:
    try:
        session.ack(deliveries)
    finally:
        session.close()


def _give_back(session: BrokerSession, deliveries: Sequence[Delivery]) -> None:
    # a failed refusal is harmless: closing without an ack redelivers them as well
    with contextlib.suppress(Exception):
        session.nack(deliveries)
    session.close()
