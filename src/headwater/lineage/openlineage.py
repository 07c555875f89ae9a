"""OpenLineage run events for headwater runs: START, then COMPLETE, FAIL or ABORT.

When ``headwater.yaml`` sets ``lineage: {openlineage: {file: lineage.ndjson}}`` (NDJSON, one
event a line, relative to the project root) or ``{url: http://127.0.0.1:5000}`` (an
OpenLineage HTTP endpoint such as Marquez), the engine reports every run through the
emitter :func:`emitter_for` returns. The job is the pipeline, in the configured namespace;
the run id is a UUID derived from the headwater run id, so every event of one run agrees.
Outputs are the dataset versions the run committed (schema, row counts, column metrics, a
``headwater`` facet with version, code version and trigger); inputs are the upstream
dataset versions (same namespace, named by dataset, so one run's output is the next one's
input) and the sources read (files under namespace ``file``, named by absolute path).

This module must never fail a run: an error while building or sending an event is logged
as a warning once per outage and swallowed. It must never leak a secret: every string of
an event passes through :data:`REDACTOR` just before it leaves, and user-info is stripped
from every URL. ``openlineage-python`` is an optional dependency (the ``openlineage``
extra), imported only when a project configures lineage.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from headwater.config.secrets import REDACTOR, resolve
from headwater.connectors.fsspec_util import file_url_to_path, has_glob, is_remote

if TYPE_CHECKING:
    from openlineage.client.event_v2 import InputDataset, OutputDataset, RunEvent
    from openlineage.client.transport import Transport

    from headwater.config.models import OpenLineageConfig
    from headwater.runtime import ProjectRuntime

log = logging.getLogger("headwater.lineage")

_RUN_NAMESPACE = uuid.UUID("5f0c3c9e-6b1d-5a53-9a0e-6e8f7d0b6c11")
"""Fixed, so the OpenLineage run id of a headwater run is the same in every process."""
_PRODUCER = "https://pypi.org/project/headwater/"
_FACET_SCHEMA = "https://headwater.invalid/spec/openlineage/1-0-0/{name}.json#/$defs/{name}"
"""Where the custom facets' JSON Schemas would live; not published yet (hence ``.invalid``)."""
_MAX_LISTED_FILES = 1000
"""A source's facet lists at most this many files (the statistics facet counts them all)."""
_HTTP_RETRY = {"total": 1, "connect": 1, "read": 1, "backoff_factor": 0.5}
"""One retry, not the client's five: a collector that is down must not stall runs."""
_HTTP_TIMEOUT = 5.0
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")

Record = Mapping[str, Any]


class LineageEmitter(Protocol):
    """What the engine calls; every method returns normally whatever happens."""

    def start(self, run: Record, inputs: list[dict[str, Any]]) -> None: ...

    def complete(self, run: Record, outputs: list[dict[str, Any]],
                 inputs: list[dict[str, Any]]) -> None: ...

    def fail(self, run: Record, error: str) -> None: ...


def emitter_for(runtime: ProjectRuntime) -> LineageEmitter | None:
    """The project's emitter, or None when it configures no OpenLineage destination."""
    lineage = runtime.config.lineage
    config = lineage.openlineage if lineage is not None else None
    if config is None or not (config.file or config.url):
        return None
    try:
        import openlineage.client  # noqa: F401 - fail here, once, rather than per event
    except ImportError:
        _warn_once("import", "lineage.openlineage is configured but openlineage-python is not "
                   "installed: pip install 'headwater[openlineage]'; runs go on without "
                   "lineage events")
        return None
    try:
        sinks = _sinks(runtime.root, config)
    except Exception as exc:  # noqa: BLE001 - a bad setting must not fail the run either
        _warn_once("config", f"lineage.openlineage is unusable ({_describe(exc)}); runs go on "
                   "without lineage events")
        return None
    return OpenLineageEmitter(runtime, sinks, config.namespace)


# --------------------------------------------------------------------------- emitter


class OpenLineageEmitter:
    """Builds a run's events and hands them to every configured destination."""

    def __init__(self, runtime: ProjectRuntime, sinks: Sequence[_Sink], namespace: str) -> None:
        self._runtime = runtime
        self._sinks = list(sinks)
        self.namespace = namespace

    def start(self, run: Record, inputs: list[dict[str, Any]]) -> None:
        self._send(lambda: self._event("START", run, inputs, []))

    def complete(self, run: Record, outputs: list[dict[str, Any]],
                 inputs: list[dict[str, Any]]) -> None:
        self._send(lambda: self._event("COMPLETE", run, _with_recorded(inputs, outputs),
                                       outputs))

    def fail(self, run: Record, error: str) -> None:
        """FAIL (ABORT for a cancelled run), naming what the run had committed before it."""
        state = "ABORT" if run.get("status") == "cancelled" else "FAIL"

        def build() -> RunEvent:
            committed = self._runtime.store.versions_by_run(str(run["id"]))
            return self._event(state, run, _with_recorded([], committed), committed, error)

        self._send(build)

    def _send(self, build: Callable[[], RunEvent]) -> None:
        try:
            event = build()
        except Exception as exc:  # noqa: BLE001 - lineage must never fail a run
            _warn_once("build", f"could not build an OpenLineage event: {_describe(exc)}")
            return
        for sink in self._sinks:
            sink.send(event)

    def _event(self, state: str, run: Record, inputs: Iterable[Mapping[str, Any]],
               outputs: Iterable[Mapping[str, Any]], error: str | None = None) -> RunEvent:
        from openlineage.client.event_v2 import Job, Run, RunEvent, RunState

        event = RunEvent(
            eventType=RunState[state],
            eventTime=datetime.now(UTC).isoformat(),
            run=Run(runId=run_uuid(str(run["id"])), facets=_run_facets(run, error)),
            job=Job(namespace=self.namespace, name=str(run["pipeline"]), facets=_job_facets()),
            inputs=self._inputs(inputs),
            outputs=[self._output(record) for record in outputs],
            producer=_PRODUCER,
        )
        scrub(event)
        return event

    def _inputs(self, items: Iterable[Mapping[str, Any]]) -> list[InputDataset]:
        found: dict[tuple[str, str], InputDataset] = {}
        for item in items:
            dataset = self._input(item)
            if dataset is not None:
                found.setdefault((dataset.namespace, dataset.name), dataset)
        return list(found.values())

    def _input(self, item: Mapping[str, Any]) -> InputDataset | None:
        kind = item.get("type", "dataset" if "dataset" in item else None)
        if kind == "dataset":
            return _dataset_input(self._runtime, self.namespace, item)
        if kind == "files":
            return _files_input(self._runtime.root, item)
        if kind is None:
            return None
        return _other_input(item)

    def _output(self, record: Mapping[str, Any]) -> OutputDataset:
        from openlineage.client.event_v2 import OutputDataset
        from openlineage.client.generated.output_statistics_output_dataset import (
            OutputStatisticsOutputDatasetFacet,
        )

        name = str(record["dataset"])
        return OutputDataset(
            namespace=self.namespace, name=name,
            facets=_version_facets(record, self._runtime.dataset_uri(name), self._runtime.root),
            outputFacets={"outputStatistics": OutputStatisticsOutputDatasetFacet(
                rowCount=int(record.get("rows_added") or 0))})


def run_uuid(run_id: str) -> str:
    """The OpenLineage run id (a UUID) of a headwater run id; the same everywhere."""
    return str(uuid.uuid5(_RUN_NAMESPACE, run_id))


def _with_recorded(inputs: Iterable[Mapping[str, Any]],
                   outputs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The given inputs plus every input and source the committed versions record."""
    found = list(inputs)
    for record in outputs:
        found.extend(record.get("inputs") or [])
        found.extend(record.get("sources") or [])
    return found


# --------------------------------------------------------------------------- facets


def _run_facets(run: Record, error: str | None) -> dict[str, Any]:
    from openlineage.client.constants import __version__ as ol_version
    from openlineage.client.generated.error_message_run import ErrorMessageRunFacet
    from openlineage.client.generated.nominal_time_run import NominalTimeRunFacet
    from openlineage.client.generated.processing_engine_run import ProcessingEngineRunFacet

    from headwater import __version__

    facets: dict[str, Any] = {
        "processing_engine": ProcessingEngineRunFacet(
            version=__version__, name="headwater", openlineageAdapterVersion=ol_version),
        "headwater": _custom_facets().run(
            run_id=str(run["id"]), seq=_int(run.get("seq")), trigger=run.get("trigger"),
            code_version=run.get("code_version"), parent_run_id=run.get("parent_run_id")),
    }
    start, end = run.get("window_start"), run.get("window_end")
    if isinstance(start, datetime):
        facets["nominalTime"] = NominalTimeRunFacet(
            nominalStartTime=start.isoformat(),
            nominalEndTime=end.isoformat() if isinstance(end, datetime) else None)
    if error is not None:
        facets["errorMessage"] = ErrorMessageRunFacet(message=error, programmingLanguage="python")
    return facets


def _job_facets() -> dict[str, Any]:
    from openlineage.client.generated.job_type_job import JobTypeJobFacet

    return {"jobType": JobTypeJobFacet(processingType="BATCH", integration="HEADWATER",
                                       jobType="PIPELINE")}


def _version_facets(record: Mapping[str, Any], uri: str, root: Path) -> dict[str, Any]:
    """What a committed dataset version tells a lineage consumer."""
    from openlineage.client.generated.dataset_version_dataset import DatasetVersionDatasetFacet
    from openlineage.client.generated.lifecycle_state_change_dataset import (
        LifecycleStateChange,
        LifecycleStateChangeDatasetFacet,
    )
    from openlineage.client.generated.storage_dataset import StorageDatasetFacet
    from openlineage.client.generated.symlinks_dataset import Identifier, SymlinksDatasetFacet

    version = int(record["version"])
    namespace, name = location(uri, root)
    facets: dict[str, Any] = {
        "version": DatasetVersionDatasetFacet(datasetVersion=str(version)),
        "storage": StorageDatasetFacet(storageLayer="delta", fileFormat="parquet"),
        "symlinks": SymlinksDatasetFacet(identifiers=[
            Identifier(namespace=namespace, name=name, type="TABLE")]),
        "headwater": _custom_facets().dataset(
            version=version, run_id=record.get("run_id"), pipeline=record.get("pipeline"),
            code_version=record.get("code_version"), trigger=record.get("trigger"),
            mode=record.get("mode"), rows_added=_int(record.get("rows_added")),
            rows_removed=_int(record.get("rows_removed")),
            rows_total=_int(record.get("rows_total"))),
    }
    schema = _schema_facet(record.get("schema"))
    if schema is not None:
        facets["schema"] = schema
    quality = _quality_facet(record.get("stats"), _int(record.get("rows_total")))
    if quality is not None:
        facets["dataQualityMetrics"] = quality
    if record.get("mode") == "overwrite" or version == 1:
        change = LifecycleStateChange.CREATE if version == 1 else LifecycleStateChange.OVERWRITE
        facets["lifecycleStateChange"] = LifecycleStateChangeDatasetFacet(
            lifecycleStateChange=change)
    return facets


def _schema_facet(schema: Any) -> Any:
    from openlineage.client.generated.schema_dataset import (
        SchemaDatasetFacet,
        SchemaDatasetFacetFields,
    )

    if not isinstance(schema, list) or not schema:
        return None
    fields = [SchemaDatasetFacetFields(name=str(col["name"]), type=str(col.get("type")),
                                       ordinal_position=number)
              for number, col in enumerate(schema, start=1) if isinstance(col, Mapping)]
    return SchemaDatasetFacet(fields=fields)


def _quality_facet(stats: Any, rows_total: int | None) -> Any:
    """Column metrics from the version's statistics document (``datasets/stats.py``)."""
    from openlineage.client.generated.data_quality_metrics_dataset import (
        DataQualityMetricsDatasetFacet,
    )

    if not isinstance(stats, Mapping):
        return None
    columns = stats.get("columns")
    if not isinstance(columns, Mapping) or not columns:
        return None
    metrics = {str(name): _column_metrics(col) for name, col in columns.items()
               if isinstance(col, Mapping)}
    rows = _int(stats.get("rows"))
    return DataQualityMetricsDatasetFacet(columnMetrics=metrics,
                                          rowCount=rows if rows is not None else rows_total)


def _column_metrics(col: Mapping[str, Any]) -> Any:
    from openlineage.client.generated.data_quality_metrics_dataset import ColumnMetrics

    quantiles: dict[str, float] = {}
    raw = col.get("quantiles")
    for key, value in (raw.items() if isinstance(raw, Mapping) else []):
        share = str(key)[1:]
        if str(key).startswith("p") and share.isdigit() and _float(value) is not None:
            quantiles[str(int(share) / 100)] = float(value)
    count = _float(col.get("count"))
    return ColumnMetrics(nullCount=_int(col.get("nulls")), distinctCount=_int(col.get("distinct")),
                         count=count, min=_float(col.get("min")), max=_float(col.get("max")),
                         quantiles=quantiles or None)


@functools.cache
def _custom_facets() -> Any:
    """headwater's own facets, defined on first use (openlineage is an optional import)."""
    import types

    import attr
    from openlineage.client.generated.base import DatasetFacet, RunFacet

    @attr.define
    class HeadwaterRunFacet(RunFacet):
        run_id: str
        seq: int | None = None
        trigger: str | None = None
        code_version: str | None = None
        parent_run_id: str | None = None

        @staticmethod
        def _get_schema() -> str:
            return _FACET_SCHEMA.format(name="HeadwaterRunFacet")

    @attr.define
    class HeadwaterDatasetFacet(DatasetFacet):
        version: int
        run_id: str | None = None
        pipeline: str | None = None
        code_version: str | None = None
        trigger: str | None = None
        mode: str | None = None
        rows_added: int | None = None
        rows_removed: int | None = None
        rows_total: int | None = None

        @staticmethod
        def _get_schema() -> str:
            return _FACET_SCHEMA.format(name="HeadwaterDatasetFacet")

    @attr.define
    class HeadwaterSourceFacet(DatasetFacet):
        type: str
        step: str | None = None
        path: str | None = None
        files: list[dict[str, Any]] | None = None
        file_count: int | None = None

        @staticmethod
        def _get_schema() -> str:
            return _FACET_SCHEMA.format(name="HeadwaterSourceFacet")

    return types.SimpleNamespace(run=HeadwaterRunFacet, dataset=HeadwaterDatasetFacet,
                                 source=HeadwaterSourceFacet)


# --------------------------------------------------------------------------- inputs


def _dataset_input(runtime: ProjectRuntime, namespace: str,
                   item: Mapping[str, Any]) -> InputDataset:
    """An upstream headwater dataset version (named like the output that made it)."""
    from openlineage.client.event_v2 import InputDataset
    from openlineage.client.generated.dataset_version_dataset import DatasetVersionDatasetFacet

    name = str(item["dataset"])
    facets: dict[str, Any] = {}
    if item.get("version") is not None:
        facets["version"] = DatasetVersionDatasetFacet(datasetVersion=str(item["version"]))
        try:
            record = runtime.store.version(name, int(item["version"]))
        except Exception:  # noqa: BLE001 - a dropped upstream is still an input, schemaless
            record = {}
        schema = _schema_facet(record.get("schema"))
        if schema is not None:
            facets["schema"] = schema
    return InputDataset(namespace=namespace, name=name, facets=facets)


def _files_input(root: Path, source: Mapping[str, Any]) -> InputDataset:
    """A files source: the folder it reads (namespace ``file``) and the files it took."""
    from openlineage.client.event_v2 import InputDataset
    from openlineage.client.generated.input_statistics_input_dataset import (
        InputStatisticsInputDatasetFacet,
    )

    pattern = str(source.get("path") or "")
    files = [f for f in source.get("files") or [] if isinstance(f, Mapping)]
    namespace, name = location(_static_prefix(pattern), root)
    listed = [{"path": strip_userinfo(str(f.get("path"))), "size": f.get("size"),
               "etag": f.get("etag")} for f in files[:_MAX_LISTED_FILES]]
    facet = _custom_facets().source(type="files", step=source.get("step"),
                                    path=strip_userinfo(pattern), files=listed,
                                    file_count=len(files))
    size = sum(int(f.get("size") or 0) for f in files)
    return InputDataset(namespace=namespace, name=name, facets={"headwater": facet},
                        inputFacets={"inputStatistics": InputStatisticsInputDatasetFacet(
                            fileCount=len(files), size=size)})


def _other_input(source: Mapping[str, Any]) -> InputDataset:
    """Any other source kind: a URL by its location, else its table or subject under its kind."""
    from openlineage.client.event_v2 import InputDataset

    kind = str(source.get("type"))
    keys = ("url", "table", "subject", "stream", "path", "connection")
    value = next((str(source[k]) for k in keys if source.get(k)), None)
    if value is not None and "://" in value:
        namespace, name = location(value, Path("."))
    else:
        namespace, name = kind, value or str(source.get("step") or kind)
    facet = _custom_facets().source(type=kind, step=source.get("step"))
    return InputDataset(namespace=namespace, name=name, facets={"headwater": facet})


def _static_prefix(path: str) -> str:
    """The folder part of a glob (``landing/*.csv`` → ``landing``); other paths unchanged."""
    if not has_glob(file_url_to_path(path)):
        return path
    kept: list[str] = []
    for part in path.split("/"):
        if has_glob(part):
            break
        kept.append(part)
    return "/".join(kept) or "."


def location(path: str, root: Path) -> tuple[str, str]:
    """``(namespace, name)`` of a file, folder or table by OpenLineage's naming rules.

    A local path is ``file`` + its absolute path (relative ones are under the project);
    a URL is ``scheme://authority`` + its path, without any user-info.
    """
    local = file_url_to_path(path)
    if is_remote(local):
        parts = urlsplit(local)
        authority = parts.netloc.rsplit("@", 1)[-1]
        return f"{parts.scheme}://{authority}", parts.path or "/"
    full = Path(local).expanduser()
    if not full.is_absolute():
        full = root / full
    return "file", os.path.normpath(str(full))


def strip_userinfo(text: str) -> str:
    """``https://user:pw@host/x`` → ``https://***@host/x`` (any URL inside ``text``)."""
    return _USERINFO.sub(r"\1***@", text)


# --------------------------------------------------------------------------- redaction


def scrub(value: Any) -> Any:
    """Mask secrets (and URL user-info) in every string of an event, in place; returns it.

    Facets built here are also stamped with headwater as their producer.
    """
    import attr
    from openlineage.client.generated.base import PRODUCER

    if isinstance(value, str):
        return strip_userinfo(REDACTOR(value))
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if attr.has(type(value)):
        for field in attr.fields(type(value)):
            current = getattr(value, field.name)
            clean = _PRODUCER if field.name == "_producer" and current == PRODUCER \
                else scrub(current)
            if clean != current:
                setattr(value, field.name, clean)
    return value


# --------------------------------------------------------------------------- destinations


class _Sink:
    """One destination (a file or an endpoint) and its client, shared by every run."""

    def __init__(self, target: str, make_transport: Callable[[], Transport],
                 serialise: bool) -> None:
        self.target = target
        self._make_transport = make_transport
        self._client: Any = None
        self._lock = threading.Lock() if serialise else None
        self._failing = False

    def send(self, event: RunEvent) -> None:
        try:
            if self._lock is None:
                self._emit(event)
            else:
                with self._lock:  # one whole line at a time in a shared NDJSON file
                    self._emit(event)
        except Exception as exc:  # noqa: BLE001 - lineage must never fail a run
            if not self._failing:
                self._failing = True
                log.warning("%s", REDACTOR(strip_userinfo(
                    f"OpenLineage events to {self.target} are failing ({_describe(exc)}); runs "
                    "go on without them (warned once until an event gets through)")))
            return
        self._failing = False

    def _emit(self, event: RunEvent) -> None:
        if self._client is None:
            from openlineage.client import OpenLineageClient

            # explicit transport; no git probing of the working directory for facets
            self._client = OpenLineageClient(
                transport=self._make_transport(),
                config={"facets": {"source_code_location": {"disabled": True}}})
        self._client.emit(event)


_SINKS: dict[str, _Sink] = {}
_SINKS_LOCK = threading.Lock()


def _sinks(root: Path, config: OpenLineageConfig) -> list[_Sink]:
    found = []
    if config.file:
        path = _event_file(root, resolve(config.file, root))
        found.append(_sink(f"file {path}", lambda: _file_transport(path), serialise=True))
    if config.url:
        url = resolve(config.url, root)
        found.append(_sink(f"url {url}", lambda: _http_transport(url), serialise=False))
    return found


def _sink(target: str, make: Callable[[], Transport], *, serialise: bool) -> _Sink:
    with _SINKS_LOCK:
        if target not in _SINKS:
            _SINKS[target] = _Sink(target, make, serialise)
        return _SINKS[target]


def _event_file(root: Path, value: str) -> str:
    if is_remote(value):
        return value
    path = Path(file_url_to_path(value)).expanduser()
    return str(path if path.is_absolute() else root / path)


def _file_transport(path: str) -> Transport:
    from openlineage.client.transport.file import FileConfig, FileTransport

    if not is_remote(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return FileTransport(FileConfig(log_file_path=path, append=True))


def _http_transport(url: str) -> Transport:
    """POST to ``url``: a base URL gets OpenLineage's ``api/v1/lineage``; a full path is kept."""
    from openlineage.client.transport.http import HttpConfig, HttpTransport

    has_path = urlsplit(url).path not in ("", "/")
    return HttpTransport(HttpConfig.from_dict({
        "url": url, "endpoint": "" if has_path else "api/v1/lineage",
        "timeout": _HTTP_TIMEOUT, "retry": dict(_HTTP_RETRY)}))


# --------------------------------------------------------------------------- helpers


_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning("%s", REDACTOR(strip_userinfo(message)))


def _describe(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
