"""The typed shape of ``headwater.yaml`` and ``pipelines/*.yaml`` (SPEC §2-3).

Every model is frozen and forbids unknown keys, so a typo is an error with a suggestion
rather than a silently ignored setting. Values that may hold ``${env:...}`` references stay
unresolved strings here: secrets are resolved at run time only (see ``secrets.py``).
This module must never import the store, the engine or any I/O library.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``"2s"``, ``"10m"``, ``"1h"``, ``1.5`` (seconds) or a timedelta → seconds."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30s, 10m or 1h, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(f"expected a duration such as 30s, 10m or 1h, got {value!r}")


DurationText = Annotated[str, Field(pattern=_DURATION.pattern)]
"""What the JSON Schema promises editors: a duration may be written as text."""

Duration = Annotated[float, BeforeValidator(parse_duration,
                                            json_schema_input_type=float | DurationText)]
"""Seconds, written in YAML as ``500ms``, ``30s``, ``10m``, ``2h`` or a bare number."""


class Model(BaseModel):
    """Base for every config model: frozen, strict about unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------- project


class LocalExecutorConfig(Model):
    type: Literal["local"] = "local"
    max_workers: int = Field(default=4, ge=1)


class LocalClusterConfig(Model):
    """A Dask cluster of worker processes on this machine, started with the run's process."""

    workers: int = Field(default=2, ge=1)
    threads_per_worker: int = Field(default=1, ge=1)


class DaskExecutorConfig(Model):
    """Steps and source partitions run as tasks on Dask distributed (extra ``[dask]``).

    Exactly one of ``address`` (an existing scheduler, ``tcp://host:8786``) and
    ``local_cluster`` (worker processes started on this machine). Workers must see the
    project folder, its run folder and the warehouse at the same paths as the server.
    """

    type: Literal["dask"]
    address: str | None = None
    local_cluster: LocalClusterConfig | None = None
    connect_timeout: Duration = 10.0
    """How long to wait for the scheduler before the run fails naming its address."""

    @model_validator(mode="after")
    def _one_cluster(self) -> DaskExecutorConfig:
        if (self.address is None) == (self.local_cluster is None):
            raise ValueError("executor type dask needs exactly one of 'address' "
                             "(tcp://host:8786) and 'local_cluster' ({workers: N})")
        if self.address is not None and "://" not in self.address:
            raise ValueError(f"executor address {self.address!r} needs a scheme, "
                             "like tcp://127.0.0.1:8786")
        return self


def _executor(value: Any) -> Any:
    if isinstance(value, str):
        return {"type": value}
    return value


ExecutorConfig = Annotated[
    LocalExecutorConfig | DaskExecutorConfig,
    BeforeValidator(_executor, json_schema_input_type=Literal["local"] | LocalExecutorConfig
                    | DaskExecutorConfig),
    Field(discriminator="type"),
]


class OpenLineageConfig(Model):
    file: str | None = None
    url: str | None = None
    namespace: str = "headwater"


class LineageConfig(Model):
    openlineage: OpenLineageConfig | None = None


class ApiToken(Model):
    token: str
    role: Literal["viewer", "operator"] = "viewer"


class AuthConfig(Model):
    """API/UI tokens; required to serve on any host but loopback (SPEC §7)."""

    tokens: list[ApiToken] = Field(default_factory=list)


class EnvironmentConfig(Model):
    """One entry of ``environments:``: settings that differ in dev, qa, prod, ...

    Scalars replace the project's; ``connections`` merge per connection (an overlay may
    change only a URL); ``params`` merge by name; ``triggers: false`` (or a mapping
    pipeline → bool) switches triggers off in that environment without touching a
    pipeline file.
    """

    store: str | None = None
    warehouse: str | None = None
    warehouse_connection: str | None = None
    executor: ExecutorConfig | None = None
    max_concurrent_runs: int | None = Field(default=None, ge=1)
    lineage: LineageConfig | None = None
    connections: dict[str, dict[str, Any]] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    triggers: bool | dict[str, bool] = True
    auth: AuthConfig | None = None

    def triggers_enabled(self, pipeline: str) -> bool:
        if isinstance(self.triggers, bool):
            return self.triggers
        return self.triggers.get(pipeline, True)


class ProjectConfig(Model):
    """``headwater.yaml``."""

    name: str = Field(min_length=1)
    store: str = "sqlite:///.headwater/headwater.db"
    warehouse: str = "./warehouse"
    warehouse_connection: str | None = None
    """The connection whose credentials reach a warehouse on az:// (or another fsspec URL)."""
    executor: ExecutorConfig = LocalExecutorConfig()
    max_concurrent_runs: int = Field(default=4, ge=1)
    lineage: LineageConfig | None = None
    connections: dict[str, dict[str, Any]] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    auth: AuthConfig | None = None
    environments: dict[str, EnvironmentConfig] = Field(default_factory=dict)

    @field_validator("connections")
    @classmethod
    def _connections_have_type(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, conn in value.items():
            if not isinstance(conn, dict) or "type" not in conn:
                raise ValueError(f"connection {name!r} needs a 'type' (postgres, azure_blob, ...)")
        return value


# --------------------------------------------------------------------------- steps


class RetryConfig(Model):
    count: int = Field(default=0, ge=0)
    backoff: Duration = 1.0


class StepBase(Model):
    """Keys every step kind accepts."""

    id: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    description: str | None = None
    needs: list[str] = Field(default_factory=list)
    retries: RetryConfig = RetryConfig()
    timeout: Duration | None = None


class CsvOptions(Model):
    delimiter: str | None = None
    header: bool = True
    null_values: list[str] | None = None
    encoding: str = "utf-8"
    quote: str | None = None
    escape: str | None = None


class FilesSource(Model):
    type: Literal["files"]
    path: str
    format: Literal["csv", "json", "ndjson", "parquet"] | None = None
    csv: CsvOptions = CsvOptions()
    columns: dict[str, str] = Field(default_factory=dict)
    bad_rows: Literal["fail", "skip", "quarantine"] = "fail"
    incremental: bool = False
    connection: str | None = None
    filename_column: bool = False


class DatasetSource(Model):
    type: Literal["dataset"]
    dataset: str = Field(validation_alias=AliasChoices("dataset", "name"))
    version: int | None = None


class SqlIncremental(Model):
    """Read only rows whose ``cursor`` reached the last run's high-water mark."""

    cursor: str = Field(min_length=1)
    initial: Any = None
    """Where the first run starts (``cursor >= initial``); without it, the whole table."""


class SqlPartitions(Model):
    """Read ``count`` ranges of ``column`` (between its min and max) in parallel."""

    column: str = Field(min_length=1)
    count: int = Field(default=4, ge=1, le=64)


class SqlSource(Model):
    type: Literal["sql"]
    connection: str
    table: str | None = None
    query: str | None = None
    incremental: SqlIncremental | None = None
    key: list[str] = Field(default_factory=list)
    """Columns identifying a row (default: the table's primary key); dedupes cursor ties."""
    partitions: SqlPartitions | None = None
    batch_rows: int = Field(default=100_000, ge=1)

    @field_validator("key", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _table_or_query(self) -> SqlSource:
        if (self.table is None) == (self.query is None):
            raise ValueError("a sql source needs exactly one of 'table' or 'query'")
        return self


class BearerAuth(Model):
    type: Literal["bearer"]
    token: str


class BasicAuth(Model):
    type: Literal["basic"]
    username: str
    password: str


class ApiKeyAuth(Model):
    type: Literal["api_key"]
    header: str = "X-API-Key"
    value: str


class OAuth2ClientCredentials(Model):
    type: Literal["oauth2_client_credentials"]
    token_url: str
    client_id: str
    client_secret: str
    scope: str | None = None


HttpAuth = Annotated[
    BearerAuth | BasicAuth | ApiKeyAuth | OAuth2ClientCredentials, Field(discriminator="type")]
"""How an HTTP source or step authenticates; values may be ``${env:...}`` references."""


class LinkHeaderPagination(Model):
    type: Literal["link_header"]


class CursorPagination(Model):
    type: Literal["cursor"]
    param: str = "cursor"
    path: str
    """Where the next cursor is in each page's JSON (``meta.next_cursor``)."""


class OffsetPagination(Model):
    type: Literal["offset"]
    param: str = "offset"
    limit: int = Field(default=100, ge=1)
    limit_param: str = "limit"


class PagePagination(Model):
    type: Literal["page"]
    param: str = "page"
    start: int = 1


HttpPagination = Annotated[
    LinkHeaderPagination | CursorPagination | OffsetPagination | PagePagination,
    Field(discriminator="type")]


class HttpIncremental(Model):
    param: str
    """The request parameter that carries the last cursor (``since``)."""
    path: str
    """Where each record's cursor value is (``updated_at``)."""
    initial: str | int | float | None = None


class HttpSource(Model):
    type: Literal["http"]
    url: str
    params: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    auth: HttpAuth | None = None
    records: str | None = None
    pagination: HttpPagination | None = None
    incremental: HttpIncremental | None = None
    max_pages: int = Field(default=10000, ge=1)
    max_retries: int = Field(default=5, ge=0)
    backoff: Duration = 1.0
    request_timeout: Duration = 30.0


class StreamSource(Model):
    """A micro-batch from a broker, acknowledged only after the run's dataset commit.

    Name what to read with the key the broker calls it: ``subject`` (NATS; ``stream``
    optionally names the JetStream stream), ``queue`` (RabbitMQ), ``topic`` (MQTT) or
    ``stream`` (a Redis stream).
    """

    type: Literal["stream"]
    connection: str
    subject: str | None = None
    queue: str | None = None
    topic: str | None = None
    stream: str | None = None
    max_messages: int = Field(default=1000, ge=1)
    max_wait: Duration = 2.0
    format: Literal["json", "text", "bytes"] = "json"
    consumer: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_\-]+$")
    """The broker-side name of the consumer (durable/group/client id); default
    ``headwater-<pipeline>-<step>``. Changing it starts reading afresh."""

    @property
    def target(self) -> str:
        """The one thing this source reads: subject, queue, topic or stream."""
        for value in (self.subject, self.queue, self.topic, self.stream):
            if value:
                return value
        raise ValueError("a stream source names a subject, queue, topic or stream")

    @model_validator(mode="after")
    def _one_target(self) -> StreamSource:
        named = [k for k in ("subject", "queue", "topic") if getattr(self, k)]
        if len(named) > 1:
            raise ValueError(f"name one of subject, queue or topic, not {' and '.join(named)}")
        if not named and not self.stream:
            raise ValueError("name what to read: subject (NATS), queue (RabbitMQ), "
                             "topic (MQTT) or stream (Redis)")
        return self


SourceConfig = Annotated[
    FilesSource | DatasetSource | SqlSource | HttpSource | StreamSource,
    Field(discriminator="type"),
]


class SourceStep(StepBase):
    source: SourceConfig


class SqlStep(StepBase):
    sql: str
    materialize: bool = False


class PythonStep(StepBase):
    python: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    inputs: list[str] = Field(default_factory=list)
    input: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)


class ColumnCheck(Model):
    type: str | None = None
    nullable: bool = True
    unique: bool = False
    min: float | str | None = None
    max: float | str | None = None
    in_: list[Any] | None = Field(default=None, alias="in")
    regex: str | None = None
    max_length: int | None = Field(default=None, ge=0)


class ValidateConfig(Model):
    input: str
    columns: dict[str, ColumnCheck] = Field(default_factory=dict)
    rules: list[str] = Field(default_factory=list)
    on_error: Literal["fail", "drop", "quarantine"] = "fail"
    max_error_ratio: float = Field(default=0.0, ge=0.0, le=1.0)


class ValidateStep(StepBase):
    validate_: ValidateConfig = Field(alias="validate")


class SplitConfig(Model):
    by: str
    train: float = Field(default=0.8, ge=0, le=1)
    validation: float = Field(default=0.1, ge=0, le=1)
    test: float = Field(default=0.1, ge=0, le=1)
    seed: int = 0


class DriftConfig(Model):
    max_psi: float = 0.2
    on_exceed: Literal["warn", "fail"] = "warn"


class PublishConfig(Model):
    input: str
    dataset: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
    mode: Literal["append", "overwrite", "merge"] = "append"
    key: list[str] = Field(default_factory=list)
    order_by: str | None = None
    partition_by: list[str] = Field(default_factory=list)
    schema_: Literal["evolve", "freeze"] = Field(default="evolve", alias="schema")
    dedupe: list[str] = Field(default_factory=list)
    split: SplitConfig | None = None
    drift: DriftConfig | None = None

    @field_validator("key", "partition_by", "dedupe", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class PublishStep(StepBase):
    publish: PublishConfig


class PollConfig(Model):
    url: str
    until: str
    fail_when: str | None = None
    every: Duration = 5.0
    timeout: Duration = 3600.0
    headers: dict[str, str] = Field(default_factory=dict)


class HttpWait(Model):
    poll: PollConfig | None = None


class HttpCallConfig(Model):
    url: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    json_: Any = Field(default=None, alias="json")
    auth: HttpAuth | None = None
    wait: HttpWait | Literal["callback"] | None = None
    max_retries: int = Field(default=5, ge=0)
    backoff: Duration = 1.0
    request_timeout: Duration = 30.0


class HttpStep(StepBase):
    http: HttpCallConfig


class CommandStep(StepBase):
    command: str | list[str]
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None


def _pipeline_name(value: Any) -> Any:
    return {"pipeline": value} if isinstance(value, str) else value


class RunPipelineConfig(Model):
    pipeline: str
    params: dict[str, Any] = Field(default_factory=dict)
    wait: Literal[True] = True
    """Only waiting is supported: the step's result is the child run's result."""


class RunPipelineStep(StepBase):
    run_pipeline: Annotated[RunPipelineConfig, BeforeValidator(_pipeline_name)]


StepConfig = (
    SourceStep
    | SqlStep
    | PythonStep
    | ValidateStep
    | PublishStep
    | HttpStep
    | CommandStep
    | RunPipelineStep
)

STEP_KINDS: dict[str, type[StepBase]] = {
    "source": SourceStep,
    "sql": SqlStep,
    "python": PythonStep,
    "validate": ValidateStep,
    "publish": PublishStep,
    "http": HttpStep,
    "command": CommandStep,
    "run_pipeline": RunPipelineStep,
}
"""The YAML key that names a step's kind → its model. Exactly one must be present."""


def step_kind(step: StepBase) -> str:
    """The kind key of a parsed step (``"sql"``, ``"publish"``, ...)."""
    for kind, model in STEP_KINDS.items():
        if type(step) is model:
            return kind
    raise TypeError(f"not a step model: {type(step).__name__}")


# --------------------------------------------------------------------------- triggers


class ScheduleConfig(Model):
    cron: str
    timezone: str = "UTC"
    catchup: bool = False


class FilesTriggerConfig(Model):
    path: str
    pattern: str = "*"
    settle: Duration = 0.5
    connection: str | None = None
    marker: str | None = None
    batch_window: Duration = 0.1
    interval: Duration = 30.0
    events: Literal["eventgrid"] | None = None
    """Also fire at once on Azure Event Grid / CloudEvents ``BlobCreated`` pushed to
    ``POST /api/events/{pipeline}``; listing every ``interval`` still reconciles."""
    token: str | None = None
    """The bearer token event pushes must carry (``${env:...}``)."""


class TableChangeConfig(Model):
    connection: str
    probe: str
    every: Duration = 30.0
    notify: str | None = None


class BatchConfig(Model):
    max: int = Field(default=1000, ge=1)
    window: Duration = 1.0


class MessageTriggerConfig(Model):
    connection: str
    subject: str
    batch: BatchConfig | None = None


class WebhookConfig(Model):
    token: str


class TriggerConfig(Model):
    """One entry of ``triggers:``; exactly one key is set."""

    schedule: ScheduleConfig | None = None
    interval: Duration | None = None
    files: FilesTriggerConfig | None = None
    table_change: TableChangeConfig | None = None
    message: MessageTriggerConfig | None = None
    dataset: str | None = None
    code_change: bool | None = None
    webhook: WebhookConfig | None = None

    @property
    def kind(self) -> str:
        for name in type(self).model_fields:
            if getattr(self, name) is not None:
                return name
        raise ValueError("empty trigger")


# --------------------------------------------------------------------------- pipeline


class PipelineConfig(Model):
    """One ``pipelines/*.yaml`` file."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")
    description: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    triggers: list[TriggerConfig] = Field(default_factory=list)
    max_concurrent_runs: int | None = Field(default=None, ge=1)
    steps: list[StepConfig] = Field(min_length=1)

    def step(self, step_id: str) -> StepConfig:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)
