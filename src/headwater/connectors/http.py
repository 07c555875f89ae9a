"""Reading JSON REST APIs over httpx: auth, retries, pagination, translated errors.

One function per concern: :func:`make_client` authenticates, :func:`request_json` sends
one request and retries what a retry can fix (429 and 5xx, honouring ``Retry-After``,
bounded), :func:`pages` follows a pagination scheme and refuses to loop. Every failure
leaves as a :class:`~headwater.exceptions.SourceError` naming the URL, the status and the
cause. Callers pass settings whose ``${env:}`` references are already resolved; this module
never logs a header or a body, and must never import the engine, steps or server.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import httpx

from headwater.config.models import (
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    CursorPagination,
    LinkHeaderPagination,
    OAuth2ClientCredentials,
    OffsetPagination,
    PagePagination,
)
from headwater.config.secrets import REDACTOR, resolve
from headwater.exceptions import SourceError, TerminalSourceError, TransientSourceError

MAX_RETRY_AFTER = 60.0
"""The longest a ``Retry-After`` is honoured; an API asking for more fails the attempt."""
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

Auth = BearerAuth | BasicAuth | ApiKeyAuth | OAuth2ClientCredentials
Pagination = LinkHeaderPagination | CursorPagination | OffsetPagination | PagePagination
Cancelled = Callable[[], bool]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently one request is retried."""

    retries: int = 5
    backoff: float = 1.0
    timeout: float = 30.0

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds to wait before retry ``attempt`` (1-based): Retry-After, else backoff."""
        asked = retry_after(response) if response is not None else None
        if asked is not None:
            return min(asked, MAX_RETRY_AFTER)
        return float(min(self.backoff * (2 ** (attempt - 1)), 30.0))


@dataclass
class Page:
    """One page of a paginated read: its URL, status, ETag and the JSON it answered."""

    url: str
    status: int
    etag: str | None
    body: Any
    response: httpx.Response = field(repr=False)


def retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


def resolve_auth(auth: Auth | None) -> Auth | None:
    """The auth settings with every ``${env:}``/``${file:}`` reference resolved (and masked)."""
    if auth is None:
        return None
    values = {k: resolve(v) if isinstance(v, str) else v
              for k, v in auth.model_dump().items()}
    return type(auth).model_validate(values)


def make_client(auth: Auth | None, headers: Mapping[str, str], policy: RetryPolicy,
                cancelled: Cancelled = lambda: False) -> httpx.Client:
    """An httpx client carrying the resolved auth and headers (auth done once, here)."""
    resolved = resolve_auth(auth)
    all_headers = {k: resolve(v) for k, v in headers.items()}
    basic: httpx.BasicAuth | None = None
    if isinstance(resolved, BearerAuth):
        all_headers["Authorization"] = f"Bearer {resolved.token}"
    elif isinstance(resolved, BasicAuth):
        basic = httpx.BasicAuth(resolved.username, resolved.password)
    elif isinstance(resolved, ApiKeyAuth):
        all_headers[resolved.header] = resolved.value
    elif isinstance(resolved, OAuth2ClientCredentials):
        token = _oauth2_token(resolved, policy, cancelled)
        REDACTOR.add(token)
        all_headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(headers=all_headers, auth=basic, timeout=policy.timeout,
                        follow_redirects=True)


def _oauth2_token(auth: OAuth2ClientCredentials, policy: RetryPolicy,
                  cancelled: Cancelled) -> str:
    """An access token from the client-credentials grant (RFC 6749 §4.4)."""
    form = {"grant_type": "client_credentials", "client_id": auth.client_id,
            "client_secret": auth.client_secret}
    if auth.scope:
        form["scope"] = auth.scope
    with httpx.Client(timeout=policy.timeout) as client:
        _, body = request_json(client, "POST", auth.token_url, policy, cancelled, data=form)
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise TerminalSourceError(f"OAuth2 token endpoint {auth.token_url} answered without "
                                  "an access_token")
    return token


def request_json(client: httpx.Client, method: str, url: str, policy: RetryPolicy,
                 cancelled: Cancelled = lambda: False,
                 **kwargs: Any) -> tuple[httpx.Response, Any]:
    """Send one request, retrying 429/5xx and network errors; return (response, JSON)."""
    attempt = 0
    while True:
        attempt += 1
        response, error = _send(client, method, url, kwargs)
        if error is None:
            assert response is not None  # _send returns a response or an error
            return response, parse_json(response)
        if attempt > policy.retries:
            raise error
        if sleep(policy.delay(attempt, response), cancelled):
            raise TerminalSourceError(f"cancelled while waiting to retry {_where(url)}")


def _send(client: httpx.Client, method: str, url: str,
          kwargs: Mapping[str, Any]) -> tuple[httpx.Response | None, SourceError | None]:
    """One attempt: the response if usable, else the error that explains why not."""
    try:
        response = client.request(method, url, **kwargs)
    except httpx.TimeoutException:
        return None, TransientSourceError(f"{method} {_where(url)} timed out")
    except httpx.TransportError as exc:
        return None, TransientSourceError(f"{method} {_where(url)} failed: "
                                          f"{type(exc).__name__}: {exc}")
    if response.status_code in _RETRY_STATUS:
        return response, TransientSourceError(
            f"{method} {_where(str(response.url))} answered {_status(response)}")
    if response.status_code >= 400:
        raise TerminalSourceError(f"{method} {_where(str(response.url))} answered "
                                  f"{_status(response)}: {_snippet(response)}")
    return response, None


def parse_json(response: httpx.Response) -> Any:
    """The body as JSON; HTML or garbage fails naming the URL, status and content type."""
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        kind = response.headers.get("content-type", "no content type")
        raise TerminalSourceError(
            f"{_where(str(response.url))} answered {_status(response)} with {kind}, not "
            f"JSON: {_snippet(response)}") from None


def _status(response: httpx.Response) -> str:
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


def _snippet(response: httpx.Response, limit: int = 120) -> str:
    text = " ".join(response.text[:limit * 2].split())
    return repr(REDACTOR(text[:limit]))


def _where(url: str) -> str:
    return REDACTOR(url)


def sleep(seconds: float, cancelled: Cancelled) -> bool:
    """Sleep in short slices; True if cancelled meanwhile."""
    end = time.monotonic() + seconds
    while True:
        if cancelled():
            return True
        left = end - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(left, 0.2))


def dig(value: Any, path: str | None) -> Any:
    """``dig(doc, "data.items")``: follow dotted keys (and list indexes); None if absent."""
    if not path:
        return value
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and part.lstrip("-").isdigit() and \
                -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def records_of(page: Page, path: str | None) -> list[Any]:
    """The records in a page: the list at ``path`` (the body itself if it is a list)."""
    found = dig(page.body, path)
    if found is None and page.body is not None and path:
        keys = sorted(page.body) if isinstance(page.body, Mapping) else []
        raise TerminalSourceError(f"{_where(page.url)}: no {path!r} in the JSON answer"
                                  + (f" (top-level keys: {', '.join(keys[:10])})"
                                     if keys else ""))
    if found is None:
        return []
    if isinstance(found, list):
        return found
    if isinstance(found, Mapping) and not path:
        return [found]
    raise TerminalSourceError(f"{_where(page.url)}: {path or 'the answer'} is a "
                              f"{type(found).__name__}, not a list of records")


@dataclass
class PageRequest:
    """What to fetch: the first URL and params, how to page and how many pages at most."""

    url: str
    params: dict[str, Any]
    records: str | None
    pagination: Pagination | None
    max_pages: int


def pages(client: httpx.Client, request: PageRequest, policy: RetryPolicy,
          cancelled: Cancelled = lambda: False) -> Iterator[tuple[Page, list[Any]]]:
    """Yield each page with its records until the scheme says stop; refuse a page loop."""
    paging = request.pagination
    url: str | None = request.url
    params: dict[str, Any] | None = _first_params(paging, dict(request.params))
    seen: set[str] = set()
    previous_digest: str | None = None
    for number in range(1, request.max_pages + 2):
        if url is None:
            return
        if number > request.max_pages:
            raise TerminalSourceError(f"{_where(request.url)}: more than max_pages="
                                      f"{request.max_pages} pages; raise max_pages if the "
                                      "API really is that long")
        if cancelled():
            raise TerminalSourceError(f"cancelled while reading {_where(request.url)}")
        response, body = request_json(client, "GET", url, policy, cancelled, params=params)
        page = Page(str(response.url), response.status_code, response.headers.get("etag"),
                    body, response)
        records = records_of(page, request.records)
        digest = _digest(records)
        if records and digest == previous_digest:
            raise TerminalSourceError(f"{_where(request.url)}: page loop: page {number} "
                                      f"({_where(page.url)}) repeats the records of page "
                                      f"{number - 1}")
        previous_digest = digest
        yield page, records
        url, params = _next(paging, page, records, params, url, seen)


def _first_params(paging: Pagination | None, params: dict[str, Any]) -> dict[str, Any]:
    """The first request's params: an offset or page scheme starts at its first value."""
    if isinstance(paging, OffsetPagination):
        params.setdefault(paging.param, 0)
        params.setdefault(paging.limit_param, paging.limit)
    elif isinstance(paging, PagePagination):
        params.setdefault(paging.param, paging.start)
    return params


def _next(paging: Pagination | None, page: Page, records: list[Any],
          params: dict[str, Any] | None, url: str,
          seen: set[str]) -> tuple[str | None, dict[str, Any] | None]:
    """The next request (URL, params), or (None, None) when the last page was read."""
    if paging is None:
        return None, None
    if isinstance(paging, LinkHeaderPagination):
        link = page.response.links.get("next", {}).get("url")
        if not link:
            return None, None
        following = urljoin(page.url, link)
        _once(seen, following, f"next link {following}", page)
        return following, None  # the link carries every query parameter itself
    assert params is not None
    if isinstance(paging, CursorPagination):
        cursor = dig(page.body, paging.path)
        if cursor in (None, "") or not records:
            return None, None
        _once(seen, json.dumps(cursor), f"cursor {cursor!r}", page)
        return url, {**params, paging.param: cursor}
    if isinstance(paging, OffsetPagination):
        if len(records) < paging.limit:
            return None, None
        return url, {**params, paging.param: int(params[paging.param]) + len(records)}
    if not records:
        return None, None
    return url, {**params, paging.param: int(params[paging.param]) + 1}


def _once(seen: set[str], marker: str, what: str, page: Page) -> None:
    if marker in seen:
        raise TerminalSourceError(f"{_where(page.url)}: page loop: the API returned the "
                                  f"same {_where(what)} twice")
    seen.add(marker)


def _digest(records: list[Any]) -> str:
    text = json.dumps(records, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
