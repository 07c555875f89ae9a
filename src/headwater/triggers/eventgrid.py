"""Azure Event Grid and CloudEvents 1.0 pushes, read into blob-arrival facts.

Pure functions over an already-authenticated request body: :func:`parse` accepts the Event
Grid schema (a JSON array of events), CloudEvents structured mode (one event, or a batch
as ``application/cloudevents-batch+json``) and binary mode (``ce-*`` headers, the body is
the data); :func:`validation_code` spots Event Grid's ``SubscriptionValidationEvent``
handshake; :func:`blobs` keeps ``Microsoft.Storage.BlobCreated`` events as blob paths in
the fsspec form files triggers use (``az://container/path``), and :func:`matches` says
whether a files trigger watches such a path. Nothing here touches the store or the queue.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from headwater.config.models import FilesTriggerConfig

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
_SUBJECT_PREFIX = "/blobServices/default/containers/"
_AZ_SCHEMES = ("az", "abfs", "abfss")


class EventError(ValueError):
    """The body is not Event Grid or CloudEvents JSON; the message says what is wrong."""


@dataclass(frozen=True)
class Event:
    """One event, whichever schema it came in."""

    id: str
    type: str
    subject: str
    data: Mapping[str, Any] = field(default_factory=dict)
    time: str | None = None


@dataclass(frozen=True)
class Blob:
    """A created blob: its container and name, size and version (eTag)."""

    container: str
    name: str
    size: int
    etag: str
    event_id: str

    def path(self, scheme: str = "az") -> str:
        return f"{scheme}://{self.container}/{self.name}"


def parse(body: bytes, headers: Mapping[str, str]) -> list[Event]:
    """The events of one push; an :class:`EventError` for anything else."""
    if headers.get("ce-specversion"):
        return [_binary(body, headers)]
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise EventError(f"the body is not JSON: {exc}") from None
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise EventError("the body is an empty list of events")
    return [_one(item, position) for position, item in enumerate(items)]


def _binary(body: bytes, headers: Mapping[str, str]) -> Event:
    """CloudEvents binary mode: attributes in ``ce-*`` headers, the body is the data."""
    missing = [h for h in ("ce-id", "ce-type") if not headers.get(h)]
    if missing:
        raise EventError(f"a binary-mode CloudEvent needs the headers {', '.join(missing)}")
    data: Any = {}
    if body:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise EventError(f"the CloudEvent data is not JSON: {exc}") from None
    return Event(id=headers["ce-id"], type=headers["ce-type"],
                 subject=headers.get("ce-subject", ""), time=headers.get("ce-time"),
                 data=data if isinstance(data, dict) else {})


def _one(item: Any, position: int) -> Event:
    if not isinstance(item, dict):
        raise EventError(f"event {position} is not a JSON object")
    if "specversion" in item:  # CloudEvents structured mode
        keys = ("id", "type")
        kind_key, time_key = "type", "time"
    else:  # Event Grid schema
        keys = ("id", "eventType")
        kind_key, time_key = "eventType", "eventTime"
    missing = [k for k in keys if not isinstance(item.get(k), str) or not item.get(k)]
    if missing:
        raise EventError(f"event {position} has no {' or '.join(missing)}")
    data = item.get("data")
    return Event(id=item["id"], type=item[kind_key], subject=str(item.get("subject") or ""),
                 time=item.get(time_key), data=data if isinstance(data, dict) else {})


def validation_code(events: Sequence[Event]) -> str | None:
    """The code of an Event Grid subscription handshake, echoed back to prove the
    endpoint wants these events."""
    for event in events:
        if event.type == VALIDATION:
            code = event.data.get("validationCode")
            if isinstance(code, str) and code:
                return code
            raise EventError("a SubscriptionValidationEvent without data.validationCode")
    return None


def blobs(events: Sequence[Event]) -> list[Blob]:
    """The BlobCreated events as blobs (other event types are not arrivals)."""
    out = []
    for event in events:
        if event.type != BLOB_CREATED:
            continue
        where = _from_subject(event.subject) or _from_url(str(event.data.get("url") or ""))
        if where is None:
            raise EventError(f"BlobCreated event {event.id} names no blob (subject "
                             f"{event.subject!r}, no data.url)")
        size = event.data.get("contentLength")
        out.append(Blob(container=where[0], name=where[1],
                        size=int(size) if isinstance(size, int | float) else 0,
                        etag=str(event.data.get("eTag") or event.data.get("etag") or ""),
                        event_id=event.id))
    return out


def _from_subject(subject: str) -> tuple[str, str] | None:
    """``/blobServices/default/containers/<c>/blobs/<name>`` → (c, name)."""
    if not subject.startswith(_SUBJECT_PREFIX):
        return None
    container, sep, name = subject[len(_SUBJECT_PREFIX):].partition("/blobs/")
    return (container, name) if sep and container and name else None


def _from_url(url: str) -> tuple[str, str] | None:
    """``https://acct.blob.core.windows.net/<c>/<name>``; Azurite's path-style
    ``http://127.0.0.1:10000/<account>/<c>/<name>`` has the account first."""
    parts = urlsplit(url)
    segments = [unquote(s) for s in parts.path.split("/") if s]
    host = parts.hostname or ""
    if host and not host.endswith(".windows.net") and len(segments) >= 3:
        segments = segments[1:]
    if len(segments) < 2:
        return None
    return segments[0], "/".join(segments[1:])


def matches(config: FilesTriggerConfig, blob: Blob) -> str | None:
    """The blob's path as the trigger lists it, if the trigger watches it, else None."""
    scheme, sep, rest = config.path.partition("://")
    if not sep or scheme not in _AZ_SCHEMES:
        return None
    prefix = rest.strip("/")
    container, _, folder = prefix.partition("/")
    if blob.container != container:
        return None
    if folder and not blob.name.startswith(folder.rstrip("/") + "/"):
        return None
    relative = blob.name[len(folder.rstrip("/")) + 1:] if folder else blob.name
    if not fnmatch.fnmatch(relative.rsplit("/", 1)[-1], config.pattern):
        return None
    return f"{config.path.rstrip('/')}/{relative}"
