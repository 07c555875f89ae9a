"""Waiting for an external job: a polling wait as plain data, and one poll as a function.

A :class:`PollWait` is fully rendered (its URL already holds the job id from the start
call) and holds no secret: auth and headers keep their ``${env:}`` references, resolved
only when a request is sent. :func:`poll_once` asks once and says whether the job is done,
failed or still running; :func:`wait_by_polling` is the blocking loop ``headwater run``
uses. The JSON that ends a wait becomes the step's one-row output (:func:`json_output`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from headwater.config.expressions import compile_condition
from headwater.config.models import HttpAuth
from headwater.config.secrets import REDACTOR
from headwater.connectors import http as httpconn
from headwater.connectors.json_arrow import JsonSpool
from headwater.exceptions import ConfigError, TerminalSourceError, TransientSourceError
from headwater.sqltext import text as sql_string
from headwater.steps.base import Parked, StepOutput

_AUTH: TypeAdapter[Any] = TypeAdapter(HttpAuth)

__all__ = ["Parked", "PollResult", "PollWait", "check_conditions", "json_output", "poll_once",
           "snippet", "timed_out", "wait_by_polling"]


@dataclass(frozen=True)
class PollWait:
    """A rendered ``wait: {poll: ...}``: what to ask, how often, until when."""

    url: str
    until: str
    fail_when: str | None
    every: float
    timeout: float
    headers: dict[str, str] = field(default_factory=dict)
    auth: dict[str, Any] | None = None
    retries: int = 5
    backoff: float = 1.0
    request_timeout: float = 30.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PollWait:
        return cls(**dict(data))

    def policy(self) -> httpconn.RetryPolicy:
        return httpconn.RetryPolicy(self.retries, self.backoff, self.request_timeout)

    def client(self, cancelled: httpconn.Cancelled = lambda: False) -> Any:
        auth = _AUTH.validate_python(self.auth) if self.auth else None
        return httpconn.make_client(auth, self.headers, self.policy(), cancelled)


@dataclass
class PollResult:
    """One poll's outcome: ``done`` when ``until`` holds; ``status`` for error messages."""

    done: bool
    status: str
    body: Any = None


def check_conditions(wait: PollWait) -> None:
    """Fail early (before the job starts) on an ``until``/``fail_when`` that cannot parse."""
    for text in (wait.until, wait.fail_when):
        if text:
            try:
                compile_condition(text)
            except ValueError as exc:
                raise ConfigError(str(exc), problems=[]) from None


def poll_once(wait: PollWait, client: Any, cancelled: httpconn.Cancelled,
              last: Any = None) -> PollResult:
    """Ask once. A transient error is not the end (the next poll may work); ``fail_when``
    holding fails the step with the JSON that said so."""
    try:
        response, body = httpconn.request_json(client, "GET", wait.url, wait.policy(),
                                               cancelled)
    except TransientSourceError as exc:
        return PollResult(False, exc.message, last)
    status = f"HTTP {response.status_code}"
    if wait.fail_when and compile_condition(wait.fail_when)(body):
        raise TerminalSourceError(f"{REDACTOR(wait.url)} reported failure "
                                  f"({wait.fail_when}): {snippet(body)}")
    return PollResult(compile_condition(wait.until)(body), status, body)


def wait_by_polling(wait: PollWait, cancelled: httpconn.Cancelled,
                    log: Callable[[str], None]) -> Any:
    """Poll every ``every`` seconds until ``until`` holds; the JSON that made it hold."""
    deadline = time.monotonic() + wait.timeout
    result = PollResult(False, "no answer yet")
    with wait.client(cancelled) as client:
        while True:
            result = poll_once(wait, client, cancelled, result.body)
            if result.done:
                return result.body
            if time.monotonic() + wait.every > deadline:
                raise timed_out(wait, result)
            log(f"waiting for {REDACTOR(wait.url)}: {result.status}, not yet "
                f"{wait.until!r}; next poll in {wait.every:g}s")
            if httpconn.sleep(wait.every, cancelled):
                raise TerminalSourceError(f"cancelled while waiting for {REDACTOR(wait.url)}")


def timed_out(wait: PollWait, last: PollResult) -> TerminalSourceError:
    return TerminalSourceError(
        f"timed out after {wait.timeout:g}s waiting for {REDACTOR(wait.url)} "
        f"({wait.until!r} never held); last answer: {last.status} {snippet(last.body)}")


def snippet(body: Any, limit: int = 200) -> str:
    text = json.dumps(body, default=str)
    return REDACTOR(text if len(text) <= limit else text[:limit] + "...")


def json_output(workdir: Path, step_id: str, body: Any, **info: Any) -> StepOutput:
    """The JSON document as a one-row relation (a Parquet file in the run folder)."""
    spool = JsonSpool(workdir / f"{step_id}.ndjson")
    spool.add([body if isinstance(body, dict) and body else {"value": body}])
    out = workdir / f"{step_id}.parquet"
    spool.finish(out)
    return StepOutput(relation=f"SELECT * FROM read_parquet({sql_string(str(out))})", rows=1,
                      info={**info, "bytes": out.stat().st_size})
