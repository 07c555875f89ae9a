"""``http`` steps: call an API, optionally wait for the job it started, output the JSON.

The start call's JSON is ``response`` in the wait's templates, so a poll URL can name the
job the call created (``.../jobs/{{ response.id }}``). The last JSON seen (the start
call's when there is no wait) is the step's output: a one-row relation later steps read
like any other. Under ``headwater run`` the step polls in its own thread. Under
``headwater serve`` it parks: it records the wait in the store and raises ``Parked``, and
the server's waiter finishes the step later (``server/waiter.py``), holding no worker.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from headwater.config.models import HttpCallConfig, HttpStep, HttpWait
from headwater.config.secrets import REDACTOR, resolve
from headwater.config.templates import render
from headwater.connectors import http as httpconn
from headwater.exceptions import ConfigError
from headwater.steps.base import StepContext, StepOutput, register
from headwater.steps.waits import (
    Parked,
    PollWait,
    check_conditions,
    json_output,
    wait_by_polling,
)
from headwater.store import waits as waitstore

CALLBACK_TIMEOUT = 24 * 3600.0
"""How long a callback is awaited unless the step sets ``timeout``."""


@register("http")
def run_http(ctx: StepContext, step: HttpStep) -> StepOutput:
    call = step.http
    if call.wait == "callback":
        return _callback(ctx, step)
    if isinstance(call.wait, HttpWait) and call.wait.poll is not None:
        check_conditions(_poll_wait(call, call.wait, {}, render_urls=False))
    body, status = start_call(ctx, call, ctx.template_vars)
    if not isinstance(call.wait, HttpWait) or call.wait.poll is None:
        return json_output(ctx.workdir, ctx.step_id, body, status=status)
    variables = {**ctx.template_vars, "response": body}
    wait = _poll_wait(call, call.wait, variables)
    ctx.log(f"started: {status}; polling {REDACTOR(wait.url)} every {wait.every:g}s "
            f"until {wait.until!r}")
    if ctx.parking is not None:
        token = secrets.token_urlsafe(32)
        waitstore.add(ctx.project.store, token=token, run_id=ctx.run_id, step_id=ctx.step_id,
                      kind="poll", spec={"poll": wait.to_json(), "status": status},
                      every=wait.every, timeout=wait.timeout)
        raise Parked(token)
    final = wait_by_polling(wait, ctx.cancelled, ctx.log)
    return json_output(ctx.workdir, ctx.step_id, final, status=status)


def _callback(ctx: StepContext, step: HttpStep) -> StepOutput:
    """Record a one-time callback URL, pass it to the start call, park the run."""
    if ctx.parking is None:
        raise ConfigError(f"step '{ctx.step_id}': wait: callback needs `headwater serve` "
                          "(it serves the callback URL); use wait: poll under headwater run",
                          problems=[])
    token = secrets.token_urlsafe(32)
    REDACTOR.add(token)  # whoever holds the URL can complete the step: never log it
    url = f"{ctx.parking.rstrip('/')}/api/callbacks/{token}"
    waitstore.add(ctx.project.store, token=token, run_id=ctx.run_id, step_id=ctx.step_id,
                  kind="callback", spec={}, every=None,
                  timeout=step.timeout or CALLBACK_TIMEOUT)
    try:
        start_call(ctx, step.http, {**ctx.template_vars,
                                    "callback": {"url": url, "token": token}})
    except BaseException:
        waitstore.drop(ctx.project.store, token)
        raise
    ctx.log("started; waiting for the callback")
    raise Parked(token)


def start_call(ctx: StepContext, call: HttpCallConfig,
               variables: Mapping[str, Any]) -> tuple[Any, int]:
    """Send the rendered start request; returns (its JSON, its status code)."""
    url = resolve(render(call.url, variables))
    headers = {k: render(v, variables) for k, v in call.headers.items()}
    payload = _render_json(call.json_, variables)
    policy = httpconn.RetryPolicy(call.max_retries, call.backoff, call.request_timeout)
    with httpconn.make_client(call.auth, headers, policy, ctx.cancelled) as client:
        extra = {"json": payload} if payload is not None else {}
        response, body = httpconn.request_json(client, call.method, url, policy,
                                               ctx.cancelled, **extra)
    ctx.log(f"{call.method} {REDACTOR(url)}: HTTP {response.status_code}")
    return body, response.status_code


def _poll_wait(call: HttpCallConfig, wait: HttpWait, variables: dict[str, Any],
               render_urls: bool = True) -> PollWait:
    """The wait with its URL rendered against ``response`` (headers keep ``${env:}``)."""
    poll = wait.poll
    assert poll is not None
    url = render(poll.url, variables) if render_urls else poll.url
    headers = {**call.headers, **poll.headers}
    if render_urls:
        headers = {k: render(v, variables) for k, v in headers.items()}
    return PollWait(url=url, until=poll.until, fail_when=poll.fail_when, every=poll.every,
                    timeout=poll.timeout, headers=headers,
                    auth=call.auth.model_dump() if call.auth else None,
                    retries=call.max_retries, backoff=call.backoff,
                    request_timeout=call.request_timeout)


def _render_json(value: Any, variables: Any) -> Any:
    """Render templates in every string of the request body (keys and values)."""
    if isinstance(value, str):
        return render(value, variables)
    if isinstance(value, dict):
        return {render(str(k), variables): _render_json(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_json(v, variables) for v in value]
    return value
