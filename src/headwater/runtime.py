"""A loaded project: its settings, pipelines, store, warehouse and connections.

This is what every layer above config shares (engine, steps, CLI, server, Python API);
it loads lazily so a command pays only for what it touches. It holds no run logic.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headwater.config.loader import (
    PIPELINES_DIR,
    PROJECT_FILE,
    PipelineFile,
    load_pipeline_file,
    load_project_config,
)
from headwater.config.models import ProjectConfig
from headwater.config.secrets import project_texts, remember_all, resolve_deep
from headwater.exceptions import ConfigError, NotFoundError

if TYPE_CHECKING:
    from headwater.store.store import Store


def find_root(start: Path | None = None) -> Path:
    """The project folder: ``start`` or the nearest parent holding headwater.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PROJECT_FILE).is_file():
            return folder
    if start is not None:
        return here
    raise ConfigError(
        f"no {PROJECT_FILE} in {here} or its parents; run 'headwater init' or pass --project DIR",
        problems=[],
    )


@dataclass
class ProjectRuntime:
    root: Path
    config: ProjectConfig
    _pipelines: dict[str, PipelineFile] | None = None
    _store: Store | None = None
    _problems: list[ConfigError] = field(default_factory=list)
    _warehouse_registered: bool = False

    env: str | None = None
    """The environment whose overlay is applied (``--env`` / ``HEADWATER_ENV``), if any."""

    version_stats: bool = True
    """Compute column statistics for every published version. ``headwater test`` turns it
    off in a sandbox whose datasets are each published by one step: its store starts
    empty, so no version there has a previous one to measure drift against, and nothing
    reads the statistics of a throwaway store. A version whose previous version has
    statistics still gets its own and its drift check, as in a real run."""

    @classmethod
    def load(cls, root: Path | str | None = None, env: str | None = None, *,
             store: Store | None = None) -> ProjectRuntime:
        """Load the project at ``root``; ``store``, if given, is used (and closed with the
        runtime) instead of opening the configured one."""
        folder = find_root(Path(root) if root is not None else None)
        env = env or os.environ.get("HEADWATER_ENV") or None
        runtime = cls(root=folder, config=load_project_config(folder, env), env=env,
                      _store=store)
        remember_all(project_texts(folder), folder)  # mask every secret, used or not
        _ = runtime.warehouse  # a remote warehouse's credentials are needed by every read
        return runtime

    def triggers_enabled(self, pipeline: str) -> bool:
        """False when the active environment switches this pipeline's triggers off."""
        if self.env is None:
            return True
        return self.config.environments[self.env].triggers_enabled(pipeline)

    @property
    def env_params(self) -> dict[str, Any]:
        """The active environment's params: they override pipeline defaults, not run params."""
        if self.env is None:
            return {}
        return dict(self.config.environments[self.env].params)

    # ----------------------------------------------------------------- pipelines

    def pipeline_files(self) -> list[Path]:
        folder = self.root / PIPELINES_DIR
        if not folder.is_dir():
            return []
        return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])

    def load_pipelines(self) -> tuple[dict[str, PipelineFile], list[ConfigError]]:
        """Every pipeline that parses, and the errors of those that do not."""
        found: dict[str, PipelineFile] = {}
        errors: list[ConfigError] = []
        for path in self.pipeline_files():
            try:
                pf = load_pipeline_file(path, self.root)
            except ConfigError as exc:
                errors.append(exc)
                continue
            if pf.config.name in found:
                other = found[pf.config.name].display
                errors.append(ConfigError(
                    f"{pf.display}:{pf.line_of('name')}: name: pipeline {pf.config.name!r} is "
                    f"already defined in {other}",
                    problems=[{"file": pf.display, "line": pf.line_of("name"), "key": "name",
                               "message": f"duplicate pipeline name (also in {other})"}]))
                continue
            found[pf.config.name] = pf
        return found, errors

    @property
    def pipelines(self) -> dict[str, PipelineFile]:
        if self._pipelines is None:
            self._pipelines, self._problems = self.load_pipelines()
        return self._pipelines

    def forget_pipelines(self) -> None:
        """Read the pipeline files again on next use (the builder wrote one)."""
        self._pipelines = None
        self._problems = []

    def pipeline(self, name: str) -> PipelineFile:
        pipelines = self.pipelines
        if name in pipelines:
            return pipelines[name]
        for err in self._problems:
            if any(name in str(p.get("file", "")) for p in err.problems):
                raise err
        import difflib

        hint = difflib.get_close_matches(name, list(pipelines), n=1)
        suffix = f"; did you mean {hint[0]!r}?" if hint else (
            f" (known: {', '.join(sorted(pipelines)) or 'none'})")
        raise NotFoundError(f"no pipeline {name!r} in {self.root / PIPELINES_DIR}{suffix}")

    def resumable(self, pipeline: str) -> bool:
        """Whether a dead local run of ``pipeline`` that began publishing is resumed, not
        failed (``store.liveness.reap_dead``).

        Only when it has several publish steps: one publish commits with its state, so a
        failed run owes nothing. Resumed, the run gives the publishes it had not reached
        the same rows its committed one took: a files source re-reads exactly the files it
        recorded, and a stream, SQL or HTTP source's spilled output is reused, not re-read
        (``engine.reuse.decide``'s ``committed``).
        """
        from headwater.config.models import PublishStep
        from headwater.exceptions import HeadwaterError

        try:
            steps = self.pipeline(pipeline).config.steps
        except HeadwaterError:
            return False
        return sum(isinstance(s, PublishStep) for s in steps) > 1

    # ----------------------------------------------------------------- services

    @property
    def store(self) -> Store:
        if self._store is None:
            from headwater.config.secrets import resolve
            from headwater.store.store import Store

            self._store = Store(resolve(self.config.store, self.root), self.root)
        return self._store

    @property
    def warehouse(self) -> str:
        """The warehouse as an absolute local path or an fsspec URL."""
        value = self.config.warehouse
        if "://" in value:
            self._register_warehouse(value.rstrip("/"))
            return value.rstrip("/")
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = self.root / path
        return str(path.resolve())

    def _register_warehouse(self, url: str) -> None:
        """Make the remote warehouse's credentials known to the Delta boundary (once)."""
        if self._warehouse_registered:
            return
        from headwater.datasets.delta import register_location
        from headwater.datasets.locations import warehouse_location

        name = self.config.warehouse_connection
        settings = self.connection(name) if name else None
        location = warehouse_location(url, settings)
        if location is not None:
            register_location(location)
        self._warehouse_registered = True

    def dataset_uri(self, name: str) -> str:
        return f"{self.warehouse}/{name}"

    def connection(self, name: str) -> dict[str, Any]:
        """A connection's settings with secrets resolved (never log the result)."""
        try:
            raw = self.config.connections[name]
        except KeyError:
            known = ", ".join(sorted(self.config.connections)) or "none"
            raise ConfigError(f"{PROJECT_FILE}: connections: no connection {name!r} "
                              f"(known: {known})", problems=[]) from None
        resolved: dict[str, Any] = resolve_deep(raw, self.root)
        return resolved

    def auth_tokens(self) -> dict[str, str]:
        """API token → role, secrets resolved (never log the result)."""
        from headwater.config.secrets import resolve

        if self.config.auth is None:
            return {}
        return {resolve(t.token, self.root): t.role for t in self.config.auth.tokens}

    @property
    def runs_dir(self) -> Path:
        return self.root / ".headwater" / "runs"

    def import_path(self) -> None:
        """Let ``transforms.x:fn`` import from the project folder."""
        root = str(self.root)
        if root not in sys.path:
            sys.path.insert(0, root)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
