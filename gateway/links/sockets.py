"""Socket settings the links share."""

from __future__ import annotations

import socket
import sys

# Linux's SO_RCVBUFFORCE, which Python's socket module does not export
_SO_RCVBUFFORCE: int | None = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform == "linux" else None)


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """SO_RCVBUF of `size` bytes, beyond net.core.rmem_max when the process may (CAP_NET_ADMIN).

    Returns the buffer the kernel granted, in the bytes of `size` (Linux reports twice what it
    accounts for, to cover its own bookkeeping)."""
    if _SO_RCVBUFFORCE is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    else:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return int(granted) // 2 if sys.platform == "linux" else int(granted)
