"""The gateway's log lines: text (the default) or one JSON object a line, request ids, the access log.

* **Format** — :func:`configure_logging` puts one handler on the root logger, writing to standard error:
  ``text`` is ``time level logger message`` followed by the record's extra fields as ``key=value``;
  ``json`` is one object a line (``timestamp``, ``level``, ``logger``, ``message`` and the extra fields),
  written by python-json-logger. Code logs fields with ``extra={...}``, never as JSON inside a message.
* **Request ids** — an incoming ``X-Request-Id`` of 1 to 128 characters of ``[A-Za-z0-9._-]`` is the
  request's id (and echoed); anything else is replaced by a fresh id. While a request is handled its id
  is in a context variable, and every line logged in that context carries it as ``request_id``.
* **Access log** — logger ``mls_gateway.access``, one INFO line per request once its response is written
  (aiohttp's access-log hook, :class:`AccessLogger`): method, route *template*, status, duration,
  request id, tenant id when authenticated, bytes in and out. Never a path as sent, a header, a token or
  a body: ids that appear in a path stay in the route's ``{placeholders}``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TextIO

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from .context import PRINCIPAL, REQUEST_ID, ROUTE_LABEL

LOG_FORMATS = ("text", "json")
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

access_log = logging.getLogger("mls_gateway.access")

_request_id: ContextVar[str | None] = ContextVar("log_request_id", default=None)
_RESERVED = frozenset(RESERVED_ATTRS)


def valid_request_id(value: str | None) -> str | None:
    """``value`` if it may be used as a request id (1–128 characters of ``[A-Za-z0-9._-]``), else None."""
    return value if value is not None and REQUEST_ID_PATTERN.fullmatch(value) else None


@contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Lines logged inside the block (and in contexts copied from it) carry ``request_id``."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            request_id = _request_id.get()
            if request_id is not None:
                record.request_id = request_id
        return True


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}


def _text_value(value: Any) -> str:
    """A string as is (JSON-quoted if it is empty or holds spaces, quotes or ``=``); anything else as
    compact JSON (``null``, ``true``, ``{"k":"v"}``)."""
    if not isinstance(value, str):
        return json.dumps(value, default=str, separators=(",", ":"))
    return json.dumps(value) if not value or any(c.isspace() or c in '"=' for c in value) else value


class TextFormatter(logging.Formatter):
    """``time level logger message`` and the record's extra fields as ``key=value``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={_text_value(v)}" for k, v in _extra_fields(record).items())
        line = super().formatMessage(record)
        return f"{line} {fields}" if fields else line


def json_formatter() -> logging.Formatter:
    """One JSON object a line: timestamp (UTC, ISO 8601), level, logger, message, then the extra fields."""
    return JsonFormatter(
        ["levelname", "name", "message"],
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp=True,
    )


class _PidFilter(logging.Filter):
    """Every line says which process wrote it (``pid``): the supervisor or one of its workers."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.pid = record.process
        return True


def configure_logging(
    level: str, log_format: str, stream: TextIO | None = None, *, with_pid: bool = False
) -> None:
    """Replace the root logger's handlers with one writing ``log_format`` lines to ``stream`` (stderr);
    ``with_pid`` (``serve --workers N``): each line carries the writing process's ``pid`` field."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(json_formatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    if with_pid:
        handler.addFilter(_PidFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access-log hook: one line per request on ``mls_gateway.access`` (see the module doc)."""

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # Requests aiohttp refused itself (malformed HTTP) never reached the app: no route, no match info.
        route = request.get(ROUTE_LABEL, "unmatched")
        principal = request.get(PRINCIPAL)
        fields = {
            "method": request.method,
            "route": route,
            "status": response.status,
            "duration_ms": round(time * 1000, 3),
            "request_id": request.get(REQUEST_ID),
            "tenant_id": principal.tenant_id if principal is not None else None,
            "bytes_in": request.content_length or 0,
            "bytes_out": response.body_length,
        }
        self.logger.info("%s %s %s", request.method, route, response.status, extra=fields)
