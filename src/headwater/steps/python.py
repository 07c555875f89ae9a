"""``python`` steps: call ``module:function`` from the project with Arrow tables.

Inputs are passed by parameter name (a parameter named like a step gets that step's rows;
``input:`` / ``inputs:`` name them explicitly), converted to what the annotation asks for:
``pyarrow.Table`` (default), ``polars.DataFrame`` or ``pandas.DataFrame``. A parameter
named ``params`` gets the run's params, ``context`` the step context. The result (any of
those three, or None) is spilled to Parquet so it survives for ``rerun --from-failed``.
What the function prints is the step's log; a failure names the project file and line.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from headwater.config.models import PythonStep
from headwater.exceptions import ConfigError, StepError
from headwater.sqltext import text as sql_string
from headwater.steps.base import StepContext, StepOutput, register
from headwater.steps.capture import prints_to

_IMPORT_LOCK = threading.Lock()


def _forget_foreign(module_name: str, root: Path) -> None:
    """Drop cached modules of this name so the project's current file is imported.

    A server hosts one project for days while its modules are edited, and tests open many
    projects with the same module names in one process.
    """
    parts = module_name.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None)
        rel = Path(*name.split("."))
        if module is not None and origin is None and _foreign_namespace(module, root, rel):
            sys.modules.pop(name, None)  # ``transforms/`` without __init__.py elsewhere
            continue
        if module is None or origin is None:
            continue
        path = Path(origin)
        ours = (root / rel.with_suffix(".py")).exists() or (root / rel).is_dir()
        if path.is_relative_to(root) or ours or not path.exists():
            sys.modules.pop(name, None)


def _foreign_namespace(module: Any, root: Path, rel: Path) -> bool:
    """A namespace package cached from another project while this one has the folder."""
    paths = [Path(p) for p in getattr(module, "__path__", None) or []]
    return bool(paths) and (root / rel).is_dir() and not any(
        p.is_relative_to(root) for p in paths)


def load_function(ref: str, root: Path) -> Callable[..., Any]:
    """Import ``module:function`` fresh from the project, so an edited module takes effect.

    Errors say what is missing and where it was looked for.
    """
    module_name, _, func_name = ref.partition(":")
    root_hint = f" (looked in {root})"
    try:
        with _IMPORT_LOCK:  # parallel steps must not drop modules under each other
            _forget_foreign(module_name, root)
            importlib.invalidate_caches()
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"python: cannot import {module_name!r} ({exc.msg}){root_hint}",
                          problems=[]) from None
    except SyntaxError as exc:
        raise StepError(f"python: {module_name} has a syntax error at line {exc.lineno}: "
                        f"{exc.msg}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"python: {module_name} has no function {func_name!r}", problems=[])
    return func  # type: ignore[no-any-return]


def _kind_of(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__module__", "")
    text = f"{text} {getattr(annotation, '__name__', '')}"
    if "polars" in text or "pl.DataFrame" in text:
        return "polars"
    if "pandas" in text or "pd.DataFrame" in text:
        return "pandas"
    return "arrow"


def _convert(table: pa.Table, kind: str) -> Any:
    if kind == "polars":
        import polars as pl

        return pl.from_arrow(table)
    if kind == "pandas":
        return table.to_pandas()
    return table


def _to_arrow(value: Any) -> pa.Table | None:
    if value is None:
        return None
    if isinstance(value, pa.Table):
        return value
    if isinstance(value, pa.RecordBatch):
        return pa.Table.from_batches([value])
    if hasattr(value, "to_arrow"):  # polars
        return value.to_arrow()
    module = type(value).__module__
    if module.startswith("pandas"):
        return pa.Table.from_pandas(value, preserve_index=False)
    raise StepError(f"python: the function returned {type(value).__name__}; return a "
                    "pyarrow.Table, polars.DataFrame, pandas.DataFrame or None")


def _user_error(ctx: StepContext, ref: str, exc: Exception) -> StepError:
    """The run error names the project file and line that raised; the log gets the
    traceback from the user's function down (headwater's own frames are noise there)."""
    root = ctx.project.root
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [i for i, f in enumerate(frames) if Path(f.filename).resolve().is_relative_to(root)]
    where = ""
    if ours:
        frame = frames[ours[-1]]
        where = f" at {Path(frame.filename).resolve().relative_to(root)}:{frame.lineno}"
        frames = traceback.StackSummary.from_list(frames[ours[0]:])
    text = "".join(["Traceback (most recent call last):\n", *frames.format(),
                    *traceback.format_exception_only(exc)])
    ctx.log(text.rstrip("\n"), level="error", stream="traceback")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return StepError(f"{ref} raised {type(exc).__name__}" + (f": {first}" if first else "")
                     + (f" ({where.strip()})" if where else ""))


@register("python")
def run_python(ctx: StepContext, step: PythonStep) -> StepOutput:
    func = load_function(step.python, ctx.project.root)
    signature = inspect.signature(func)
    named = ([step.input] if step.input else []) + list(step.inputs)
    kwargs: dict[str, Any] = {}
    con = ctx.cursor()
    positional: list[Any] = []
    params = list(signature.parameters.values())
    for index, param in enumerate(params):
        if param.name == "params":
            kwargs["params"] = dict(ctx.template_vars.get("params", {}))
        elif param.name in ("context", "ctx"):
            kwargs[param.name] = ctx
        elif param.name in ctx.inputs or (index < len(named)):
            source = param.name if param.name in ctx.inputs else named[index]
            relation = ctx.inputs[source].relation
            table = con.sql(relation).to_arrow_table() if relation else pa.table({})
            kwargs[param.name] = _convert(table, _kind_of(param.annotation))
        elif param.name in step.args:
            kwargs[param.name] = step.args[param.name]
        elif param.default is inspect.Parameter.empty and param.kind not in (
                param.VAR_KEYWORD, param.VAR_POSITIONAL):
            raise ConfigError(f"python: {step.python} takes {param.name!r}, which is no "
                              f"input step, 'params' or 'context'", problems=[])
    del positional
    try:
        with prints_to(lambda line: ctx.log(line, stream="output")):
            result = func(**kwargs)
    except Exception as exc:
        raise _user_error(ctx, step.python, exc) from exc
    table = _to_arrow(result)
    if table is None:
        return StepOutput()
    path = ctx.workdir / f"{ctx.step_id}.parquet"
    pq.write_table(table, path)
    return StepOutput(relation=f"SELECT * FROM read_parquet({sql_string(str(path))})",
                      rows=table.num_rows, info={"bytes": path.stat().st_size})
