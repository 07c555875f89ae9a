"""Benchmark: a NATS JetStream batch to a published dataset, as one whole `headwater run`.

Run:  python bench/stream_to_dataset.py [--messages 100000] [--url nats://127.0.0.1:4222]

The parent publishes ``--messages`` JSON messages (an id, a user, an amount, a nested
object, a list) to a fresh JetStream stream, then times two fresh processes reading all
of them with their own durable consumer:

  headwater       `headwater run events` of `source: {type: stream, max_messages: N}` ->
                  `publish`, acknowledging after the commit (Delta + store records)
  nats-py floor   the hand-written floor: a nats-py pull consumer fetching batches,
                  json.loads, pyarrow.Table.from_pylist, deltalake.write_deltalake, ack

Target: headwater >= 50,000 messages/s (issue 9), printed with `ok` or `MISSED`, and its
ratio to the floor. The stream is deleted at the end. Needs a NATS server with JetStream.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Measurement, headwater_exe, machine_line, measure, table

TARGET_MESSAGES_PER_S = 50_000
FETCH = 5000


def message(i: int) -> bytes:
    import json

    return json.dumps({"id": i, "user": f"u{i % 997}", "amount": round(i * 0.37, 2),
                       "device": {"os": "linux" if i % 3 else "ios", "v": i % 7},
                       "tags": ["a", "b"][: i % 3]}).encode()


# --------------------------------------------------------------------------- broker


async def publish(url: str, subject: str, stream: str, count: int) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[subject])
        for start in range(0, count, FETCH):
            for i in range(start, min(start + FETCH, count)):
                await nc.publish(subject, message(i))
            await nc.flush()
        info = await js.stream_info(stream)
        while info.state.messages < count:
            await asyncio.sleep(0.05)
            info = await js.stream_info(stream)
    finally:
        await nc.close()


async def delete_stream(url: str, stream: str) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


# --------------------------------------------------------------------------- children


async def floor(url: str, subject: str, stream: str, count: int, out: Path) -> None:
    """The hand-written floor: fetch, parse, one Arrow table, one Delta write, ack."""
    import json

    import nats
    import pyarrow as pa
    from deltalake import write_deltalake
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(subject, durable="floor_" + uuid.uuid4().hex[:8],
                                  stream=stream, config=ConsumerConfig(
                                      ack_policy=AckPolicy.EXPLICIT,
                                      deliver_policy=DeliverPolicy.ALL,
                                      max_ack_pending=2 * count))
    msgs = []
    while len(msgs) < count:
        msgs += await sub.fetch(min(FETCH, count - len(msgs)), timeout=5)
    rows = [json.loads(m.data) for m in msgs]
    write_deltalake(str(out / "floor"), pa.Table.from_pylist(rows))
    for m in msgs:
        await m.ack()
    await nc.flush()
    await nc.close()


def run_floor(args: argparse.Namespace, subject: str, stream: str, work: Path) -> Measurement:
    cmd = [sys.executable, __file__, "--child", "--url", args.url, "--subject", subject,
           "--stream", stream, "--messages", str(args.messages), "--out", str(work)]
    return measure(cmd).check("nats-py floor")


def run_headwater(args: argparse.Namespace, subject: str, stream: str,
                  work: Path) -> Measurement:
    project = work / "headwater_project"
    (project / "pipelines").mkdir(parents=True)
    (project / "headwater.yaml").write_text(
        f"name: bench\nconnections:\n  bus: {{type: nats, url: '{args.url}'}}\n")
    (project / "pipelines" / "events.yaml").write_text(
        "name: events\n"
        "steps:\n"
        "  - id: raw\n"
        f"    source: {{type: stream, connection: bus, subject: '{subject}', "
        f"stream: {stream}, max_messages: {args.messages}, max_wait: 300s}}\n"
        "  - id: publish\n"
        "    publish: {input: raw, dataset: events}\n")
    result = measure([headwater_exe(), "run", "events", "--project", str(project)],
                     cwd=project).check("headwater run events")
    check_published(project, args.messages)
    return result


def check_published(project: Path, count: int) -> None:
    import json
    import subprocess

    listing = subprocess.run([headwater_exe(), "datasets", "--json", "--project", str(project)],
                             capture_output=True, text=True, check=True, cwd=project).stdout
    found = {d["name"]: d.get("rows") for d in json.loads(listing)}
    if found.get("events") != count:
        raise SystemExit(f"headwater published {found!r}, expected events with {count} rows")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--url", default="nats://127.0.0.1:4222")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--subject", help=argparse.SUPPRESS)
    p.add_argument("--stream", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        asyncio.run(floor(args.url, args.subject, args.stream, args.messages, args.out))
        return
    tag = uuid.uuid4().hex[:10]
    subject, stream = f"bench.{tag}", f"BENCH_{tag}"
    print(machine_line())
    print(f"publishing {args.messages:,} JSON messages to {stream} ...", flush=True)
    asyncio.run(publish(args.url, subject, stream, args.messages))
    work = Path(tempfile.mkdtemp(prefix="hw-bench-stream-"))
    try:
        results = []
        for tool, job in (("headwater", run_headwater), ("nats-py floor", run_floor)):
            print(f"running {tool} ...", flush=True)
            m = job(args, subject, stream, work)
            results.append((tool, m))
            print(f"  {m.seconds:.2f}s, peak RSS {m.peak_rss_mb:,.0f} MB", flush=True)
    finally:
        asyncio.run(delete_stream(args.url, stream))
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(["tool", "seconds", "messages/s", "peak RSS MB"],
                [[tool, m.seconds, args.messages / m.seconds, m.peak_rss_mb]
                 for tool, m in results]))
    rate = {tool: args.messages / m.seconds for tool, m in results}
    verdict = "ok" if rate["headwater"] >= TARGET_MESSAGES_PER_S else "MISSED"
    print(f"\nheadwater {rate['headwater']:,.0f} messages/s (target >= "
          f"{TARGET_MESSAGES_PER_S:,}: {verdict}); "
          f"{rate['headwater'] / rate['nats-py floor']:.2f}x the nats-py floor")


if __name__ == "__main__":
    main()
