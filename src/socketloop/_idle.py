"""The idle pool: greenlets of ended threads, kept for reuse by new threads.

Charter
-------
Creating a greenlet and running Python code in it costs a fresh interpreter
stack chunk (an mmap, a page fault and a munmap when it ends); switching into
an idle one costs about as much as one switch.  When a thread ends, its
greenlet may wait here (in ``_thread_main``) until ``newthread``/``spawn``
hands it a new thread to run.

Reuse must be invisible: a greenlet is kept only when nothing outside the
loop can still reach the ended thread (no result, exception, attributes,
handles or weak references), which is checked by counting references, exact
on CPython with the GIL.  An idle greenlet refers to its loop only weakly, so
it never keeps a dropped loop alive.

``IdlePool`` is a mixin of the kernel (the pool is a list on the kernel object,
so creating a thread costs no extra lookups).  It must not switch into
threads other than through the kernel's ``_resume_into``, nor schedule them.
"""

from __future__ import annotations

import sys
import types
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from greenlet import GreenletExit, getcurrent, gettrace, greenlet

from ._threads import Thread

if TYPE_CHECKING:
    pass

__all__ = ["IDLE_THREADS_KEPT", "IdlePool"]

R = TypeVar("R")

#: Ended threads whose greenlets a loop keeps for reuse.  Idle greenlets
#: cost ~6 KiB each.
IDLE_THREADS_KEPT = 64

# Reusing an ended thread's greenlet is safe only when nothing outside the
# loop can still reach the ended thread: see IdlePool._take_idle.  The check
# counts references, which is exact on CPython with the GIL.
_CAN_REUSE: bool = (
    sys.implementation.name == "cpython" and getattr(sys, "_is_gil_enabled", lambda: True)()
)

#: The reference count of an idle greenlet nothing else refers to (measured once).
_idle_refs: int | None = None
_greenlet_dead: Any = greenlet.dead.__get__
#: Handlers whose name can be read without running user code.
_PLAIN_CALLABLES = (
    types.FunctionType,
    types.MethodType,
    types.BuiltinFunctionType,
    types.BuiltinMethodType,
)


def _nothing() -> None:
    pass


def _pop_counting_refs(idle: list[Thread[Any]]) -> tuple[Thread[Any], int]:
    # The count is taken here, in the same frame shape every time: the
    # caller compares it with the one measured on a probe the same way.
    thread = idle.pop()
    return thread, sys.getrefcount(thread)


class IdlePool:
    """Keeping, handing out and retiring the greenlets of ended threads (kernel mixin)."""

    # Provided by the kernel.
    _idle: list[Thread[Any]]
    _closed: bool
    _root: greenlet | None
    _measuring: bool
    _weakself: Any  # a weak reference to the kernel

    def _resume_into(self, thread: Thread[Any], arg: Any) -> Any:
        raise NotImplementedError  # the kernel's

    def _keep_idle(self, thread: Thread[Any]) -> bool:
        """Called by an ended ``thread`` as its last act: keep its greenlet for reuse?

        True when the thread's greenlet is to wait in the idle pool for
        ``_take_idle`` to give it a new thread to run; False lets it end.
        """
        idle = self._idle
        if (
            not _CAN_REUSE
            or self._closed
            or len(idle) >= IDLE_THREADS_KEPT
            or getcurrent() is not thread
            # Control goes to the OS thread's root greenlet (the usual
            # dispatcher), which lives as long as the OS thread does.
            or (thread.parent is not self._root and not self._measuring)
            or not self._strippable(thread)
        ):
            return False
        thread.gr_context = None  # drop the context variables the handler set
        self._strip_for_idle(thread)
        idle.append(thread)
        return True

    @staticmethod
    def _strippable(thread: Thread[Any]) -> bool:
        """Can ``thread`` wait in the idle pool without keeping alive anything a handle could reach?

        An idle greenlet cannot be garbage-collected (greenlet cannot see
        what its suspended frames refer to), so it must refer to nothing
        that could lead back to its loop: no result, no exception, no
        attributes, and a name that needs no handler object.
        """
        if thread._result is not None or thread._exc is not None or thread.__dict__:
            return False
        name = thread._name
        if type(name) is not tuple or isinstance(name[0], str):
            return True  # already a string, or a server's (label, address)
        return type(name[1]) in _PLAIN_CALLABLES

    def _strip_for_idle(self, thread: Thread[Any]) -> None:
        """Drop what an idle thread refers to that a handle cannot observe."""
        name = thread._name
        if type(name) is tuple and not isinstance(name[0], str):
            thread._name = f"Thread-{name[0]} ({name[1].__qualname__})"  # not the handler
        thread._kill_exc = None
        thread._pending_kill = None
        thread._waiting_on = None
        thread._wake_value = None
        thread._wake_exc = None
        thread._resumer = self._root if self._root is not None else thread._resumer
        # The loop stays reachable through a weak reference only (see Thread.loop).
        thread._home = self._weakself
        thread._loop = None  # type: ignore[assignment]

    def _take_idle(
        self,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        root: greenlet,
    ) -> Thread[R]:
        """An idle greenlet set up as a new thread, or a brand-new thread.

        An ended thread is reused only when nothing but its own idle frame
        refers to it: then no handle to it exists anywhere, and the reuse
        cannot be told from a new thread.  One that is still referenced (a
        handle kept for ``join()``, a weak reference, a greenlet parent) is
        ended for real instead.
        """
        global _idle_refs
        if _idle_refs is None:
            if sys.gettrace() or sys.getprofile() or gettrace():
                # A tracer may hold references (frame locals, switch
                # arguments): measure later.
                return Thread(self, fn, args, kwargs, root)
            _idle_refs = self._measure_idle_refs(root)
        idle = self._idle
        while idle:
            thread, refs = _pop_counting_refs(idle)
            if (
                refs == _idle_refs
                and not weakref.getweakrefcount(thread)
                and not _greenlet_dead(thread)
            ):
                thread._loop = self  # type: ignore[assignment]  # a Loop at run time
                thread.parent = root  # as for a new thread: no parent cycle can form
                thread._reset(fn, args, kwargs, root)
                return thread
            self._retire(thread)
        return Thread(self, fn, args, kwargs, root)

    def _measure_idle_refs(self, root: greenlet) -> int:
        """The reference count of an idle greenlet that nothing else refers to.

        Measured once on a probe that runs the same code as every thread,
        since it depends on the interpreter and greenlet versions.  The probe
        is started from a helper greenlet (where it ends, whoever calls)
        and goes to an idle pool of its own.
        """
        saved = self._idle
        self._idle = []
        self._measuring = True
        try:

            def start_probe() -> None:
                self._resume_into(Thread(self, _nothing, (), {}, root), None)

            greenlet(start_probe).switch()
            if len(self._idle) != 1:
                return -1  # not kept (reuse is impossible here): never reuse
            thread, refs = _pop_counting_refs(self._idle)
            self._retire(thread)
            return refs
        finally:
            self._idle = saved
            self._measuring = False

    def _return_to_idle(self, thread: Thread[Any]) -> None:
        """A reused greenlet whose new thread was killed before it started: keep it idle again."""
        if self._closed or len(self._idle) >= IDLE_THREADS_KEPT or not self._strippable(thread):
            self._retire(thread)
        else:
            self._strip_for_idle(thread)
            self._idle.append(thread)

    def _retire(self, thread: Thread[Any]) -> None:
        """End an idle greenlet for good (its thread has long ended)."""
        if _greenlet_dead(thread):
            return
        try:
            thread.parent = getcurrent()
        except ValueError:  # pragma: no cover - a cycle: let garbage collection end it
            return
        thread.throw(GreenletExit)

    def _retire_idle(self) -> None:
        idle = self._idle
        while idle:
            self._retire(idle.pop())
