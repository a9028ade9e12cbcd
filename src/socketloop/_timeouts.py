"""Timeout scopes: ``with loop.timeout(s):`` and ``with loop.move_on_after(s):``.

Charter: bound a block of code in one thread by a deadline, whatever it waits
on inside.  The scope arms one timer; when it fires, the loop interrupts the
thread where it is suspended with a private exception that only this scope
recognises, so nested scopes never mistake each other's expiry: the inner
scope that expired is the one reported, and an outer expiry passes through
inner scopes untouched.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._threads import DEAD, Thread
from ._timers import TimerHandle

if TYPE_CHECKING:
    from ._loop import Loop

__all__ = ["Timeout"]


class _Expired(BaseException):
    """Carries one scope's expiry from the suspension point up to that scope.

    A ``BaseException`` so that ``except Exception`` in user code inside the
    block does not swallow it on its way up.
    """

    def __init__(self, scope: Timeout) -> None:
        super().__init__(f"timeout scope of {scope.seconds} s expired")
        self.scope = scope


class Timeout:
    """A deadline for a ``with`` block in a loop thread; see ``Loop.timeout``.

    ``expired`` tells afterwards whether the deadline passed.  Not reusable:
    make a new scope for each block.
    """

    __slots__ = ("_handle", "_loop", "_silent", "_thread", "expired", "seconds")

    def __init__(self, loop: Loop, seconds: float | None, *, silent: bool) -> None:
        # Checked here, not when the block is entered: the mistake is at this call.
        if seconds is not None and not isinstance(seconds, (int, float)):
            raise TypeError(
                f"timeout seconds must be a number or None, not {type(seconds).__name__}"
            )
        self._loop = loop
        self.seconds = seconds
        self._silent = silent
        self._thread: Thread[Any] | None = None
        self._handle: TimerHandle | None = None
        self.expired = False

    def __enter__(self) -> Timeout:
        if self._thread is not None:
            raise RuntimeError("a timeout scope cannot be entered twice")
        thread = self._loop._current_or_raise("timeout()")
        self._thread = thread
        if self.seconds is not None:
            self._handle = self._loop.call_later(self.seconds, self._expire)
        return self

    def _expire(self) -> None:
        thread = self._thread
        if thread is None or thread._state == DEAD:
            return
        self.expired = True
        self._loop._interrupt(thread, _Expired(self), priority=False)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._thread = None
        if isinstance(exc, _Expired) and exc.scope is self:
            if self._silent:
                return True
            raise TimeoutError(f"timed out after {self.seconds} s") from None
        return False

    def __repr__(self) -> str:
        state = "expired" if self.expired else ("active" if self._thread else "idle")
        return f"<socketloop.Timeout {self.seconds} s {state}>"
