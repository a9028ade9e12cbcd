"""The public surface: the module functions mirror the loop methods exactly."""

from __future__ import annotations

import inspect

import pytest

import socketloop
from socketloop import CoroLoop, Loop
from socketloop._api import LoopFunctions

FUNCTION_NAMES = sorted(
    name
    for name, value in vars(LoopFunctions).items()
    if not name.startswith("_") and callable(value)
)


def test_every_exported_name_exists() -> None:
    for name in socketloop.__all__:
        assert hasattr(socketloop, name), name


@pytest.mark.parametrize("name", FUNCTION_NAMES)
def test_module_function_has_the_signature_of_the_loop_method(name: str) -> None:
    function = getattr(LoopFunctions, name)
    method = getattr(Loop, name)
    assert inspect.signature(function) == inspect.signature(method)


@pytest.mark.parametrize("name", FUNCTION_NAMES)
def test_both_modules_export_the_function(name: str) -> None:
    assert name in socketloop.__all__
    assert name in socketloop.coro.__all__
    assert callable(getattr(socketloop, name))
    assert callable(getattr(socketloop.coro, name))


@pytest.mark.parametrize("name", FUNCTION_NAMES)
def test_module_function_carries_the_loop_method_docstring(name: str) -> None:
    assert getattr(socketloop, name).__doc__ == getattr(Loop, name).__doc__
    assert getattr(Loop, name).__doc__


def test_the_symmetric_module_adds_transfer() -> None:
    assert socketloop.coro.transfer.__doc__ == CoroLoop.transfer.__doc__
    assert not hasattr(socketloop, "transfer")


def test_the_module_functions_act_on_the_calling_threads_default_loops() -> None:
    assert socketloop.get_loop() is socketloop.get_loop()
    assert isinstance(socketloop.coro.get_loop(), CoroLoop)
    assert socketloop.coro.Loop is CoroLoop
    socketloop.get_loop().close()
    socketloop.coro.get_loop().close()
