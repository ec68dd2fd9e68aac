"""Socket settings the links share."""

from __future__ import annotations

import socket
import sys

# Linux's SO_RCVBUFFORCE, which Python's socket module does not export
_SO_RCVBUFFORCE: int | None = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform == "linux" else None)


def set_receive_buffer(sock: socket.socket, size: int) -> None:
    """SO_RCVBUF of `size` bytes: beyond net.core.rmem_max when the process may (CAP_NET_ADMIN)."""
    if _SO_RCVBUFFORCE is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
            return
        except PermissionError:
            pass
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
