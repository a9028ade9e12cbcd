"""The package as a user first meets it: what importing it costs and what its names are."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_socketloop_does_not_import_its_ssl_and_socket_modules() -> None:
    out = run_python(
        "import sys, socketloop\n"
        "print(sorted(m for m in ('socketloop.ssl', 'socketloop.socket', 'socketloop.testing')"
        " if m in sys.modules))"
    )
    assert out == "[]"


def test_socketloop_ssl_is_reachable_as_an_attribute_after_import_socketloop() -> None:
    out = run_python(
        "import socketloop\n"
        "context = socketloop.ssl.create_default_context()\n"
        "print(type(context).__module__, type(context).__name__)"
    )
    assert out == "socketloop.ssl SSLContext"


def test_socketloop_socket_is_reachable_as_an_attribute_after_import_socketloop() -> None:
    out = run_python(
        "import socketloop\n"
        "sock = socketloop.socket.socket()\n"
        "print(isinstance(sock, socketloop.AsyncSocket))\n"
        "sock.close()"
    )
    assert out == "True"


def test_an_unknown_attribute_of_the_package_raises_attribute_error() -> None:
    out = run_python(
        "import socketloop\n"
        "try:\n"
        "    socketloop.no_such_name\n"
        "except AttributeError as error:\n"
        "    print(error)"
    )
    assert out == "module 'socketloop' has no attribute 'no_such_name'"


def test_the_lazy_submodules_are_listed_by_dir() -> None:
    import socketloop

    assert {"socket", "ssl", "testing"} <= set(dir(socketloop))


def public_modules() -> list[str]:
    """Every public module of the package: its non-underscore submodules, found on disk."""
    import pkgutil

    import socketloop

    names = [
        f"socketloop.{info.name}"
        for info in pkgutil.iter_modules(socketloop.__path__)
        if not info.name.startswith("_")
    ]
    return ["socketloop", *sorted(names)]


def test_the_public_modules_are_discovered() -> None:
    assert {"socketloop.coro", "socketloop.socket", "socketloop.ssl", "socketloop.testing"} <= set(
        public_modules()
    )


@pytest.mark.parametrize("module_name", public_modules())
def test_every_name_in_all_exists(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    assert names is not None, f"{module_name} has no __all__"
    missing = [name for name in names if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names what it lacks: {missing}"


@pytest.mark.parametrize("module_name", public_modules())
def test_star_import_works(module_name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {module_name} import *", namespace)
    assert set(importlib.import_module(module_name).__all__) <= set(namespace)
