"""``run_pipeline`` steps: run another pipeline of the project and wait for its result.

The child is a run of its own (trigger ``pipeline``, ``parent_run_id`` = the parent run,
``trigger_info`` naming the parent run, pipeline and step), so lineage and ``runs`` link
both ways. Under ``headwater run`` the child executes here, in this step's thread. Under
``headwater serve`` the child is queued and the parent parks (``steps/waits.py``): it
holds no worker while its child runs, so even ``max_concurrent_runs: 1`` cannot deadlock.
The step fails with the child's failure; its output is one row describing the child run.
"""

from __future__ import annotations

import secrets
from typing import Any

from headwater.config.models import RunPipelineStep
from headwater.config.templates import render
from headwater.exceptions import StepError
from headwater.steps.base import StepContext, StepOutput, register
from headwater.steps.waits import Parked, json_output
from headwater.store import waits as waitstore

FINAL = ("succeeded", "failed", "cancelled")
CHILD_TIMEOUT = 7 * 24 * 3600.0
"""How long a parked parent waits for its child unless the step sets ``timeout``."""


@register("run_pipeline")
def run_pipeline(ctx: StepContext, step: RunPipelineStep) -> StepOutput:
    child_id = _create_child(ctx, step)
    ctx.log(f"started run {child_id} of pipeline {step.run_pipeline.pipeline!r}",
            child_run_id=child_id)
    if ctx.parking is not None:
        token = secrets.token_urlsafe(32)
        waitstore.add(ctx.project.store, token=token, run_id=ctx.run_id, step_id=ctx.step_id,
                      kind="run", spec={"child_run_id": child_id}, every=0.0,
                      timeout=step.timeout or CHILD_TIMEOUT)
        raise Parked(token)
    child = ctx.run_child(child_id)
    if child["status"] != "succeeded":
        raise StepError(child_failure(child))
    return json_output(ctx.workdir, ctx.step_id, child_outcome(child), child_run_id=child_id)


def _create_child(ctx: StepContext, step: RunPipelineStep) -> str:
    """Create the child run: ``running`` here under ``headwater run``, else ``queued``."""
    from headwater.project import coerce_params

    config = step.run_pipeline
    pipeline = ctx.project.pipeline(config.pipeline)
    given = {k: render(v, ctx.template_vars) if isinstance(v, str) else v
             for k, v in config.params.items()}
    params = coerce_params(pipeline.config.params, given, config.pipeline)
    info = {"parent_run": ctx.run_id, "parent_pipeline": ctx.pipeline,
            "parent_step": ctx.step_id}
    return ctx.project.store.create_run(
        config.pipeline, trigger="pipeline", trigger_info=info, params=params,
        parent_run_id=ctx.run_id, status="queued" if ctx.parking is not None else "running")


def child_outcome(child: dict[str, Any]) -> dict[str, Any]:
    """The step's one row: which run, of which pipeline, and how it ended."""
    return {"child_run_id": child["id"], "pipeline": child["pipeline"],
            "status": child["status"]}


def child_failure(child: dict[str, Any]) -> str:
    """``child run R of pipeline 'p' failed: <its error>``."""
    return (f"child run {child['id']} of pipeline {child['pipeline']!r} {child['status']}: "
            f"{child.get('error') or 'no error recorded'}")
