"""systemd's readiness protocol for ``mls-gateway serve`` (``Type=notify``, deploy/mls-gateway.service).

sd_notify(3): the service manager passes a Unix datagram socket in ``$NOTIFY_SOCKET`` (a path, or an
abstract name written with a leading ``@``); the service sends newline-separated ``KEY=VALUE`` assignments
to it. ``serve`` sends ``READY=1`` once the API listens and the runtime (HSM session pool, store) answered a
readiness check, and ``STOPPING=1`` when SIGTERM/SIGINT starts the graceful shutdown. Without
``$NOTIFY_SOCKET`` (not under systemd) nothing is sent. A failed send is logged and never stops the gateway:
systemd then times the start out, which is the failure it should see.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("mls_gateway")


def _address(value: str) -> str:
    """An abstract socket name (``@name``) as the kernel spells it: a leading NUL byte."""
    return "\0" + value[1:] if value.startswith("@") else value


def notify(*assignments: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``assignments`` (e.g. ``READY=1``) to ``$NOTIFY_SOCKET``; whether a message was sent."""
    target = (os.environ if env is None else env).get("NOTIFY_SOCKET")
    if not target:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_address(target))
            sock.sendall("\n".join(assignments).encode("utf-8"))
    except OSError as e:
        log.warning("cannot notify systemd at %s: %s", target, e.strerror or e)
        return False
    return True


__all__ = ["notify"]
