"""Every error headwater raises, in one tree.

::

    HeadwaterError                 base; ``exit_code`` is what the CLI exits with
    ├── ConfigError                a project or pipeline file is wrong (file, line, key)
    ├── ParamError                 a run param is unknown or not of its declared type
    ├── SourceError                a source could not be read (step, source, cause)
    │   ├── TransientSourceError   worth retrying: a connection refused, a timeout
    │   └── TerminalSourceError    retrying will not help: a malformed file, a 404
    ├── StepError                  a step's own code or SQL failed (step, cause)
    ├── ValidationError            rows broke a declared contract beyond what is allowed
    ├── PublishError               a dataset commit failed; nothing was half-written
    ├── StoreError                 the metadata store is unreachable or inconsistent
    ├── TriggerError               a trigger could not be armed or fired
    ├── ExecutorError              the executor (a Dask cluster) is unreachable or lost work
    ├── RunFailed                  a run ended failed; carries the run id and the first cause
    └── NotFoundError              a run, dataset or version that does not exist

Library exceptions are translated where they enter (``raise ... from exc``) so callers
catch these and never a driver's. Every exception pickles (the Dask executor ships them
between processes) because each keeps its constructor arguments in ``args``.
"""

from __future__ import annotations

from typing import Any


class HeadwaterError(Exception):
    """Base of every headwater error. ``exit_code`` follows the CLI contract (SPEC §4)."""

    exit_code = 2

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message, context)
        self.message = message
        self.context = context

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.context))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[HeadwaterError], message: str, context: dict[str, Any]) -> HeadwaterError:
    return cls(message, **context)


class ConfigError(HeadwaterError):
    """A project or pipeline file is invalid.

    ``problems`` holds one :class:`ConfigProblem`-like dict per finding, so ``check`` can
    report all of them at once rather than the first.
    """

    @property
    def problems(self) -> list[dict[str, Any]]:
        return list(self.context.get("problems", []))


class ParamError(HeadwaterError):
    """A run param that is unknown or not of its declared type (names param, value, type)."""


class SourceError(HeadwaterError):
    """A source could not be read."""

    exit_code = 1
    transient = False


class TransientSourceError(SourceError):
    """A source failed in a way a retry may fix (connection refused, timeout, 5xx)."""

    transient = True


class TerminalSourceError(SourceError):
    """A source failed in a way no retry fixes (malformed data, a missing file)."""


class StepError(HeadwaterError):
    """A step's own logic failed: bad SQL, a Python transform that raised, a timeout."""

    exit_code = 1


class ValidationError(HeadwaterError):
    """Rows broke a declared contract and the step's policy says to fail."""

    exit_code = 1


class PublishError(HeadwaterError):
    """A dataset commit failed; the previous version is untouched."""

    exit_code = 1


class StoreError(HeadwaterError):
    """The metadata store is unreachable, locked too long, or inconsistent."""


class TriggerError(HeadwaterError):
    """A trigger could not be armed or fired."""


class ExecutorError(HeadwaterError):
    """The configured executor cannot run steps: no ``[dask]`` extra, an unreachable
    scheduler (named by its address), or a task lost with its workers too often."""

    exit_code = 1


class RunFailed(HeadwaterError):
    """A run finished in ``failed`` (or ``cancelled``); the message names step and cause."""

    exit_code = 1


class NotFoundError(HeadwaterError):
    """A run, pipeline, dataset or version that does not exist."""
