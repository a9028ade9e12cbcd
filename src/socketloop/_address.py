"""Address helpers: telling numeric hosts from names, and printing addresses.

Charter: pure functions on address values, shared by every layer (threads
name themselves after peers, sockets and servers put addresses in errors,
the resolver skips numeric hosts).  It sits at the bottom of the package and
must not import anything from it; it never resolves, connects or logs.
"""

from __future__ import annotations

import socket as _socket
from typing import Any

__all__ = ["format_address", "is_numeric_host"]


def is_numeric_host(host: str) -> bool:
    """True for an IPv4 or IPv6 literal (with an optional ``%scope``): no resolver needed."""
    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, host.partition("%")[0])
        except (OSError, ValueError):
            continue
        return True
    return False


def format_address(address: Any) -> str:
    """``host:port`` for IP addresses (``[v6]:port``), the path for Unix sockets."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        if isinstance(host, str) and ":" in host:
            return f"[{host}]:{port}"
        return f"{host}:{port}"
    if isinstance(address, bytes):
        return address.decode(errors="backslashreplace")
    return str(address)
