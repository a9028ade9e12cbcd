"""Loop threads: stackful coroutines (greenlets) and their state machine.

Charter: a ``Thread`` runs one handler on its own stack, records how it ended
(result or exception) and who waits for that, and knows its state.  It does
not schedule itself: every switch into a thread is made by the loop (dispatch,
``resume``, ``transfer``, ``newthread``), which is why the state transitions
below are written by the kernel (``_scheduler``, ``_kernel``) and only
read here.

States::

    NEW ──start──> RUNNING ──suspend()──> SUSPENDED ──resume()/transfer()──> RUNNING
                     │  ^                                                         │
          I/O, sleep,│  │woken by the loop        resume()/newthread() of another │
             join... v  │                         thread: NORMAL until it returns v
                   WAITING ──ready──> READY (scheduled for the next dispatch)
                     any state ──handler returns or raises──> DEAD

A ``Thread`` *is* its greenlet (a subclass), so ``greenlet.getcurrent()``
answers ``current()`` without a lookup table.
"""

from __future__ import annotations

import itertools
import logging
import reprlib
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from greenlet import GreenletExit, getcurrent, greenlet

from ._address import format_address
from ._errors import ThreadExit

if TYPE_CHECKING:
    from ._loop import Loop

__all__ = ["Thread"]

logger = logging.getLogger("socketloop")

T = TypeVar("T")

# States.  Small ints so the hot path compares cheaply; names for repr.
NEW = 0
READY = 1
RUNNING = 2
NORMAL = 3
SUSPENDED = 4
WAITING = 5
DEAD = 6
STATE_NAMES = ("new", "ready", "running", "normal", "suspended", "waiting", "dead")

_counter = itertools.count(1)
_greenlet_dead: Any = greenlet.dead.__get__

#: How ``await thread`` waits: installed by ``socketloop.aio`` (the layer
#: above that knows asyncio), so this module never imports it.
await_hook: Callable[[Thread[Any]], Generator[Any, None, Any]] | None = None


class Thread(greenlet, Generic[T]):
    """A loop thread running ``handler(*args, **kwargs)``.

    Create threads with ``loop.newthread`` (runs at once until it first
    suspends) or ``loop.spawn`` (starts at the next dispatch), never directly.
    Attributes: ``name`` (settable), ``loop``; methods: ``is_alive``,
    ``join``, ``kill``.  Threads are not thread-safe: use them from the OS
    thread that runs their loop.
    """

    __slots__ = (
        "_exc",
        "_fn_args",
        "_home",
        "_joiners",
        "_kill_exc",
        "_loop",
        "_name",
        "_pending_kill",
        "_result",
        "_resumer",
        "_state",
        "_waiting_on",
        "_wake_exc",
        "_wake_value",
    )

    def __init__(
        self,
        loop: Any,  # the Loop (a kernel subclass) creating it
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent: greenlet,
    ) -> None:
        super().__init__(_thread_main, parent)
        self._loop: Loop = loop
        self._reset(fn, args, kwargs, parent)

    def _reset(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        resumer: greenlet,
    ) -> None:
        """Set up a new thread: called on creation and when an ended one is reused."""
        self._fn_args: tuple[Callable[..., T], tuple[Any, ...], dict[str, Any]] | None = (
            fn,
            args,
            kwargs,
        )
        #: Names are made on first use: most threads are never asked for one.
        self._name: str | tuple[int | str, Any] = (next(_counter), fn)
        self._state = NEW
        self._resumer: greenlet = resumer
        self._result: T | None = None
        self._exc: BaseException | None = None
        self._joiners: list[Thread[Any]] | None = None
        #: What a WAITING thread waits on: the ``source`` of ``Kernel._block``
        #: (its identity, and its description for dump()), or a socket.
        self._waiting_on: object = None
        #: Value or exception delivered when a READY thread is switched into.
        self._wake_value: object = None
        self._wake_exc: BaseException | None = None
        #: The exception a kill() delivered (so its arrival is not logged as a crash).
        self._kill_exc: BaseException | None = None
        #: A kill() aimed at this thread while it was resuming another one.
        self._pending_kill: BaseException | None = None

    #: While idle (kept for reuse): a weak reference to the loop (see _idle).
    _home: Callable[[], Loop | None]

    # greenlet's truth value means "started and not dead"; a Thread object is
    # always truthy, like any other handle.
    def __bool__(self) -> bool:
        return True

    @property
    def dead(self) -> bool:
        """True once the handler has ended (greenlet's ``dead``, for a thread)."""
        # An ended thread's greenlet may be kept in the idle pool for reuse
        # (see _idle) and so not dead for greenlet itself.
        return self._state == DEAD or _greenlet_dead(self)

    def _run_handler(self) -> bool:
        """Run the handler and record how it ended; True if the greenlet may be reused."""
        fn, args, kwargs = self._fn_args  # type: ignore[misc]
        self._fn_args = None
        try:
            # Plain calls, not fn(*args): CPython runs a plain call of a
            # Python function in the same C-level frame, where a star-call
            # nests a new one; the C stack greenlet saves for every
            # suspended thread stays smaller (memory per idle connection).
            if kwargs:
                self._result = fn(*args, **kwargs)
            elif not args:
                self._result = fn()
            elif len(args) == 1:
                self._result = fn(args[0])
            elif len(args) == 2:
                self._result = fn(args[0], args[1])
            elif len(args) == 3:
                self._result = fn(args[0], args[1], args[2])
            else:
                self._result = fn(*args)
        except ThreadExit:
            pass  # killed: not an error, not logged; join() returns None
        except GreenletExit:
            # Killed the same way, or by greenlet itself, which throws
            # GreenletExit into a suspended greenlet it is about to free:
            # then the greenlet must end, not be kept for reuse.
            return False
        except BaseException as exc:
            self._exc = exc
            if exc is self._kill_exc:
                pass  # killed with a custom exception: join() re-raises it, no log
            elif isinstance(exc, (KeyboardInterrupt, SystemExit)):
                # These belong to the program, not the thread: end the thread
                # and let them propagate to whoever switched into it last
                # (the dispatcher, or the caller of newthread/resume).
                self._loop._thread_finished(self)
                raise
            else:
                logger.error("%s raised %s", self.name, type(exc).__name__, exc_info=exc)
            return False
        return True

    # ---------------------------------------------------------------- public

    @property
    def name(self) -> str:
        """A readable name: ``Thread-N (handler)`` unless set."""
        name = self._name
        if isinstance(name, tuple):
            first, second = name
            if isinstance(first, str):  # (label, address): a server's connection thread
                name = f"{first} {format_address(second)}"
            else:
                fn_name = getattr(second, "__qualname__", None) or getattr(second, "__name__", None)
                name = f"Thread-{first} ({fn_name})" if fn_name else f"Thread-{first}"
            self._name = name
        return name

    @name.setter
    def name(self, value: str) -> None:
        self._name = str(value)

    @property
    def loop(self) -> Loop:
        """The loop this thread belongs to.

        (An ended thread refers to its loop weakly while its greenlet waits
        for reuse; if the loop was dropped without ``close()`` and collected
        meanwhile, this is None.)
        """
        loop: Loop | None = self._loop
        if loop is None:  # kept in the idle pool: see _idle
            loop = self._home()
        return loop  # type: ignore[return-value]  # None only once the loop is gone

    @property
    def state(self) -> str:
        """One of new, ready, running, normal, suspended, waiting, dead."""
        return STATE_NAMES[self._state]

    def is_alive(self) -> bool:
        """True until the handler has returned or raised."""
        return self._state != DEAD

    def join(self, timeout: float | None = None) -> T:
        """Wait until the thread ends; return its result or re-raise its exception.

        From a loop thread of the same loop this suspends only the caller;
        from outside any loop thread it runs the loop until the thread ends.
        Raises ``TimeoutError`` when ``timeout`` seconds pass first, and
        ``RuntimeError`` when the wait could never end (joining oneself, or
        nothing left in the loop that could wake the thread).
        """
        if self._state != DEAD:
            self._loop._join(self, timeout)
        if self._exc is not None:
            raise self._exc
        return self._result  # type: ignore[return-value]

    def kill(
        self,
        exc: type[BaseException] | BaseException = ThreadExit,
        *,
        block: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Raise ``exc`` inside the thread at its suspension point.

        Its ``finally`` blocks run and whatever it waited on is released.
        With ``block`` (the default) wait until it has ended (up to
        ``timeout`` seconds).  Killing a dead or not yet started thread is
        harmless; killing the running thread raises ``exc`` right here.
        ``TypeError`` if ``exc`` is not an exception class or instance.
        """
        if self._state == DEAD:
            return
        self._loop._kill(self, exc, block=block, timeout=timeout)

    def __await__(self) -> Generator[Any, None, T]:
        """``await thread`` in asyncio code: ``join()`` without blocking the host loop.

        Only for a thread of a loop hosted on the running asyncio loop
        (``socketloop.aio.hosted()``); elsewhere ``RuntimeError``.
        Cancelling the awaiting task kills the thread and waits for it.
        """
        hook = await_hook
        if hook is None:
            raise RuntimeError(
                "`await thread` needs its loop hosted on the running asyncio loop: "
                "use `async with socketloop.aio.hosted():`"
            )
        result: T = yield from hook(self)
        return result

    def __repr__(self) -> str:
        state = STATE_NAMES[self._state]
        detail = ""
        if self._state == WAITING and self._waiting_on is not None:
            detail = f" on {self._loop._describe_wait(self)}"
        elif self._state == DEAD and self._exc is not None:
            detail = f" with {type(self._exc).__name__}"
        return f"<Thread {reprlib.repr(self.name)} {state}{detail}>"


def _thread_main(*_switch_args: object) -> None:
    """What every thread's greenlet runs: handlers, one after another.

    After a handler ends, the loop may keep the greenlet waiting here, in
    its idle pool, and later hand it a new thread to run (see ``_idle``).
    While idle, no local variable refers to the thread or its loop: an idle
    greenlet that nothing else refers to is freed (greenlet then ends it
    with ``GreenletExit``), and it never keeps a dropped loop alive.
    """
    del _switch_args  # a resume() argument must not live as long as the greenlet
    thread: Thread[Any] = getcurrent()  # type: ignore[assignment]
    while True:
        if thread._fn_args is None:  # killed before it started
            return
        reusable = thread._run_handler()
        loop = thread._loop
        loop._thread_finished(thread)
        if not (reusable and loop._keep_idle(thread)):
            return
        del thread, loop
        thread = _wait_for_reuse()


def _wait_for_reuse() -> Thread[Any]:
    """Keep the current greenlet idle until it is given a new thread to run; return that."""
    value: object = None
    while True:
        # Control goes where the ending would have sent it: the greenlet
        # parent, which _thread_finished set.  No local refers to the thread.
        value = getcurrent().parent.switch(value)  # type: ignore[union-attr]
        if getcurrent()._fn_args is not None:  # type: ignore[attr-defined]
            return getcurrent()  # type: ignore[return-value]
        # Something switched into what is, for everyone else, a dead
        # greenlet; greenlet would pass that on to the parent: so do we.
