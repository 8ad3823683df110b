"""Problem documents (RFC 9457) with the stable codes of the API contract (``api-v1.md``).

Every failure an HTTP client can see is a :class:`Problem`: a status, a stable machine ``code``, a
human ``detail`` and, for validation failures, the RFC 9420 ``rule``. :func:`problem_from_exception`
maps the library's and the HSM layer's errors onto them; anything unexpected becomes a 500 whose detail
says nothing about the cause (it is logged with the request id instead).
"""

from __future__ import annotations

from typing import Any

from hsm.errors import HsmUnavailable
from mls import DecodeError, KeyStoreError, MLSError, StateError, UnsupportedError, ValidationError

from .credential_policy import CredentialRejected

PROBLEM_CONTENT_TYPE = "application/problem+json"

#: code -> (status, title)
CODES: dict[str, tuple[int, str]] = {
    "invalid_request": (400, "Invalid request"),
    "decode_error": (400, "Malformed MLS encoding"),
    "validation_failed": (422, "Rejected by an RFC 9420 rule"),
    "unauthorized": (401, "Unauthorized"),
    "not_found": (404, "Not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "not_a_member": (403, "Not a member of the group"),
    "conflict": (409, "Conflict"),
    "payload_too_large": (413, "Payload too large"),
    "unsupported": (422, "Unsupported"),
    "hsm_unavailable": (503, "HSM unavailable"),
    "store_unavailable": (503, "Store unavailable"),
    "internal_error": (500, "Internal error"),
    "credential_rejected": (422, "Credential rejected by the tenant's credential policy"),
    # abuse resistance (issue 17): refused before any work is done
    "unsupported_media_type": (415, "Unsupported media type"),
    "quota_exceeded": (429, "Quota exceeded"),
    "rate_limited": (429, "Too many requests"),
    "request_timeout": (408, "Request timeout"),
}


class Problem(Exception):
    """An error answered to the client as a problem document."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        rule: str | None = None,
        retry_after: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if code not in CODES:
            raise ValueError(f"unknown problem code {code}")
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.rule = rule
        self.retry_after = retry_after
        #: Members of the document beside the standard ones (e.g. ``current_epoch`` of a 409).
        self.extra = dict(extra or {})

    @property
    def status(self) -> int:
        return CODES[self.code][0]

    def document(self, instance: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": f"urn:mls-gateway:problem:{self.code}",
            "title": CODES[self.code][1],
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
        }
        if self.rule is not None:
            doc["rule"] = self.rule
        if instance is not None:
            doc["instance"] = instance
        doc.update(self.extra)
        return doc


def invalid(detail: str) -> Problem:
    return Problem("invalid_request", detail)


def not_found(what: str = "resource") -> Problem:
    return Problem("not_found", f"no such {what}")


def conflict(detail: str, **extra: Any) -> Problem:
    return Problem("conflict", detail, extra=extra)


def kept_moving() -> Problem:
    """An append that lost the race to the group's log every time it was retried (api-delivery.md)."""
    return conflict("the group's log kept moving; retry")


def stale_epoch(current_epoch: int) -> Problem:
    """A commit or proposal for an epoch the group's log (or the member) already left (api-delivery.md)."""
    return conflict(f"the group is at epoch {current_epoch}", current_epoch=current_epoch)


def problem_from_exception(exc: BaseException) -> Problem:
    """The problem a library error stands for (never leaking secrets: library errors carry none)."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, HsmUnavailable):
        return Problem("hsm_unavailable", "the HSM is unavailable; retry later", retry_after=5)
    if isinstance(exc, DecodeError):
        return Problem("decode_error", str(exc))
    if isinstance(exc, CredentialRejected):
        return Problem("credential_rejected", exc.message, rule=exc.rule, extra={"reason": exc.reason})
    if isinstance(exc, ValidationError):
        return Problem("validation_failed", exc.message, rule=exc.rule)
    if isinstance(exc, StateError):
        return Problem("conflict", str(exc))
    if isinstance(exc, UnsupportedError):
        return Problem("unsupported", str(exc))
    if isinstance(exc, KeyStoreError | MLSError):
        return Problem("validation_failed", str(exc))
    return Problem("internal_error", "internal error (see the server log for this request id)")
