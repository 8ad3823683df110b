"""Many signature verifications at once (RFC 9420 §5.1.2), for the checks that come by the thousand:
the leaves of a ratchet tree a joiner receives (§7.3, §12.4.3.1) and the KeyPackages of a commit that
adds many members (§10.1, §12.2).

:func:`verify_many` verifies a batch with each distinct public key loaded once, and, for a large batch,
on a few threads: OpenSSL's verification runs without Python's global interpreter lock, so the batch
takes the wall time of its share per core (the CPU time is the same). :func:`set_verify_threads` sets
how many (``1``: all in the calling thread).

:func:`prefetched` runs a batch (when it is large enough for threads, and there are threads) ahead of
the code that checks those signatures one by one, in its own order, between other checks: within the
``with`` block, :meth:`CipherSuite.verify_with_label
<mls.crypto.cipher_suite.CipherSuite.verify_with_label>` takes a signature's result from the batch (a
real verification, done a moment before) rather than verifying it again, so every check still happens,
at the same point and with the same error. The results live in a context variable: another thread or
task never sees them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar

from mls.crypto.signature import PublicKey, SignatureScheme

#: One verification: (public key in its wire form, signed data, signature).
Item = tuple[bytes, bytes, bytes]

#: Below this many items a batch is verified in the calling thread (threads would not pay off).
PARALLEL_THRESHOLD = 64

_lock = threading.Lock()
_threads = max(1, min(4, os.cpu_count() or 1))
_pool: ThreadPoolExecutor | None = None


def set_verify_threads(threads: int) -> None:
    """Verify large batches on up to ``threads`` threads (default: the CPU count, at most 4)."""
    global _threads, _pool
    if threads < 1:
        raise ValueError("at least one thread verifies")
    with _lock:
        _threads = threads
        old, _pool = _pool, None
    if old is not None:
        old.shutdown(wait=False)


def verify_threads() -> int:
    return _threads


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_threads - 1, thread_name_prefix="mls-verify")
        return _pool


def _forget_pool_in_child() -> None:
    """A forked child has none of the parent's threads: it makes a pool of its own when it needs one."""
    global _pool, _lock
    _pool, _lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def _verify_chunk(scheme: SignatureScheme, items: Sequence[Item]) -> list[bool]:
    keys: dict[bytes, PublicKey | None] = {}
    out: list[bool] = []
    for public_key, data, signature in items:
        if public_key in keys:
            key = keys[public_key]
        else:
            key = keys[public_key] = scheme.load_public_key(public_key)
        out.append(key is not None and scheme.verify_with_key(key, data, signature))
    return out


def verify_many(scheme: SignatureScheme, items: Sequence[Item]) -> list[bool]:
    """``scheme.verify`` of every item, in order: ``True`` where the signature is valid."""
    threads = _threads
    if threads == 1 or len(items) < PARALLEL_THRESHOLD:
        return _verify_chunk(scheme, items)
    size = -(-len(items) // threads)
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    pool = _executor()
    futures = [pool.submit(_verify_chunk, scheme, chunk) for chunk in chunks[1:]]
    out = _verify_chunk(scheme, chunks[0])  # the calling thread takes its share too
    for future in futures:
        out.extend(future.result())
    return out


_Key = tuple[int, bytes, bytes, bytes]
_prefetched: ContextVar[dict[_Key, bool] | None] = ContextVar("mls_prefetched_signatures", default=None)


@contextmanager
def prefetched(scheme: SignatureScheme, items: Sequence[Item]) -> Iterator[None]:
    """Verify ``items`` now, in one batch, and let the checks inside the block use the results. With one
    thread (or a batch too small for threads) there is nothing to gain: the checks verify as they go."""
    if _threads == 1 or len(items) < PARALLEL_THRESHOLD:
        yield
        return
    results = dict(zip(((scheme.code, *item) for item in items), verify_many(scheme, items), strict=True))
    outer = _prefetched.get()
    token = _prefetched.set(results if outer is None else {**outer, **results})
    try:
        yield
    finally:
        _prefetched.reset(token)


def prefetched_result(
    scheme: SignatureScheme, public_key: bytes, data: bytes, signature: bytes
) -> bool | None:
    """The result :func:`prefetched` found for this verification, ``None`` when it has none."""
    results = _prefetched.get()
    if results is None:
        return None
    return results.get((scheme.code, public_key, data, signature))
