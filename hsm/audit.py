"""Audit hook: every use of a private key is reported to a callback the gateway attaches.

An :class:`AuditEvent` carries the key reference (non-secret), the operation (``generate``, ``import``,
``sign``, ``dh``, ``destroy``, ``wrap``, ``unwrap``), the key's custody (``pkcs11`` or ``software``),
whether the operation succeeded, and the *caller context* — whatever the gateway put in
:data:`caller_context` for the current request (tenant, group, request id...). Nothing secret is passed:
no data, signature, shared secret or plaintext.

The caller context is a :class:`contextvars.ContextVar`. ``asyncio.to_thread`` copies the context into
the worker thread; ``loop.run_in_executor`` does not, so wrap the call in
``contextvars.copy_context().run`` when using an executor directly.

The hook runs after the operation, in the calling thread. If it raises, the exception propagates and the
operation's result is not returned (fail-closed auditing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import NamedTuple

_EMPTY: Mapping[str, str] = MappingProxyType({})

#: The caller context of the current request; set it with :func:`caller`.
caller_context: ContextVar[Mapping[str, str]] = ContextVar("hsm_caller_context", default=_EMPTY)


class AuditEvent(NamedTuple):
    """One private-key use. ``key_ref`` is the store's opaque reference, never key material."""

    key_ref: bytes
    operation: str
    custody: str
    ok: bool
    context: Mapping[str, str]


AuditHook = Callable[[AuditEvent], None]


@contextmanager
def caller(**context: str) -> Iterator[None]:
    """Set the caller context for key operations made inside the ``with`` block (merged over the
    outer one)."""
    merged = {**caller_context.get(), **context}
    token = caller_context.set(MappingProxyType(merged))
    try:
        yield
    finally:
        caller_context.reset(token)


class Auditor:
    """Holds the attached hook (or none) and emits events to it."""

    __slots__ = ("hook",)

    def __init__(self, hook: AuditHook | None = None) -> None:
        self.hook = hook

    def emit(self, key_ref: bytes, operation: str, custody: str, ok: bool) -> None:
        hook = self.hook
        if hook is not None:
            hook(AuditEvent(key_ref, operation, custody, ok, dict(caller_context.get())))


__all__ = ["AuditEvent", "AuditHook", "Auditor", "caller", "caller_context"]
