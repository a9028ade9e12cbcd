"""File objects over async sockets: what ``AsyncSocket.makefile()`` returns.

Charter: CPython's ``socket.makefile`` layering (a raw ``SocketIO`` under the
standard buffered and text classes, the socket kept open while files are),
with one difference: the socket's timeout bounds each *file operation* as a
whole, not each system call under it.  A ``readline()`` on a peer that
trickles one byte per second would otherwise never time out (every
underlying read succeeds in time), which is how slow-loris clients hold
servers hostage.  Each public read or write method of the buffered and text
layers opens a deadline on the raw object; nested calls share the outermost
one.
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._asocket import AsyncSocket

__all__ = ["SocketIO", "make_file"]

# io.text_encoding picks the default text encoding the way open() does (3.10+).
_text_encoding: Any = getattr(io, "text_encoding", lambda encoding: encoding)


class SocketIO(io.RawIOBase):
    """Raw I/O over an async socket."""

    def __init__(self, sock: AsyncSocket, mode: str) -> None:
        if mode not in ("r", "w", "rw", "rb", "wb", "rwb"):
            raise ValueError(f"invalid mode: {mode!r}")
        super().__init__()
        self._sock: AsyncSocket | None = sock
        if "b" not in mode:
            mode += "b"
        self._mode = mode
        self._reading = "r" in mode
        self._writing = "w" in mode
        self._timed_out = False
        #: The deadline of the file operation in progress (see the charter).
        self._deadline: float | None = None

    def _socket(self) -> AsyncSocket:
        sock = self._sock
        if sock is None:
            raise ValueError("I/O operation on closed socket file")
        return sock

    def _begin(self) -> bool:
        """Open the deadline of a file operation unless one is open; True if opened."""
        if self._deadline is not None:
            return False
        sock = self._sock
        timeout = None if sock is None else sock._timeout
        if not timeout:  # None: wait forever; 0: non-blocking
            return False
        self._deadline = time.monotonic() + timeout
        return True

    def _end(self, opened: bool) -> None:
        if opened:
            self._deadline = None

    def readinto(self, buffer: Any) -> int | None:
        self._checkClosed()
        if not self._reading:
            raise io.UnsupportedOperation("File or stream is not readable.")
        if self._timed_out:
            # As CPython: after a timeout the buffered layer may hold a
            # partial record, so further reads could return garbage.
            raise OSError("cannot read from timed out object")
        sock = self._socket()
        try:
            deadline = self._deadline
            if deadline is None:
                return sock.recv_into(buffer)
            return sock._recv_into_until(buffer, deadline)
        except TimeoutError:
            self._timed_out = True
            raise
        except BlockingIOError:
            return None
        except BaseException as exc:
            if not isinstance(exc, Exception):
                # Interrupted while waiting (a timeout() scope expiring,
                # Thread.kill): the same state as a timeout, the reader
                # stopped somewhere in the peer's message.  A protocol
                # client that reads on would take the rest of that old
                # answer for the reply to its next request.
                self._timed_out = True
            raise

    def write(self, data: Any) -> int | None:
        self._checkClosed()
        if not self._writing:
            raise io.UnsupportedOperation("File or stream is not writable.")
        sock = self._socket()
        try:
            deadline = self._deadline
            if deadline is None:
                return sock.send(data)
            return sock._send_until(data, deadline)
        except BlockingIOError:
            return None

    def readable(self) -> bool:
        if self.closed:
            raise ValueError("I/O operation on closed socket.")
        return self._reading

    def writable(self) -> bool:
        if self.closed:
            raise ValueError("I/O operation on closed socket.")
        return self._writing

    def seekable(self) -> bool:
        if self.closed:
            raise ValueError("I/O operation on closed socket.")
        return False

    def fileno(self) -> int:
        self._checkClosed()
        return self._socket().fileno()

    @property
    def name(self) -> int:
        return self.fileno() if not self.closed else -1

    @property
    def mode(self) -> str:
        return self._mode

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        sock = self._sock
        self._sock = None
        if sock is not None:
            sock._decref_socketios()


def _bounded(base: type, name: str) -> Any:
    """A method that runs ``base.name`` within one operation deadline."""
    inner = getattr(base, name)

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        raw: SocketIO = self._socketio
        opened = raw._begin()
        try:
            return inner(self, *args, **kwargs)
        finally:
            raw._end(opened)

    method.__name__ = name
    method.__qualname__ = name
    return method


def _with_deadlines(base: type, names: tuple[str, ...]) -> type:
    namespace: dict[str, Any] = {name: _bounded(base, name) for name in names}
    namespace["__doc__"] = f"{base.__name__} whose operations share one deadline each."
    return type(f"Deadline{base.__name__}", (base,), namespace)


_READS = ("read", "read1", "readinto", "readinto1", "readline", "readlines", "peek")
_WRITES = ("write", "flush")
_Reader: Any = _with_deadlines(io.BufferedReader, _READS)
_Writer: Any = _with_deadlines(io.BufferedWriter, _WRITES)
_Pair: Any = _with_deadlines(io.BufferedRWPair, _READS + _WRITES)
_Text: Any = _with_deadlines(io.TextIOWrapper, ("read", "readline", "readlines", "write", "flush"))


def make_file(
    sock: AsyncSocket,
    mode: str,
    buffering: int | None,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
) -> Any:
    """The body of ``AsyncSocket.makefile``."""
    if not set(mode) <= {"r", "w", "b"}:
        raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
    writing = "w" in mode
    reading = "r" in mode or not writing
    binary = "b" in mode
    raw = SocketIO(sock, ("r" if reading else "") + ("w" if writing else ""))
    sock._io_refs += 1
    if buffering is None or buffering < 0:
        buffering = io.DEFAULT_BUFFER_SIZE
    if buffering == 0:
        if not binary:
            raise ValueError("unbuffered streams must be binary")
        return raw
    buffer: Any
    if reading and writing:
        buffer = _Pair(raw, raw, buffering)
    elif reading:
        buffer = _Reader(raw, buffering)
    else:
        buffer = _Writer(raw, buffering)
    buffer._socketio = raw
    if binary:
        return buffer
    text = _Text(buffer, _text_encoding(encoding), errors, newline)
    text._socketio = raw
    text.mode = mode
    return text
