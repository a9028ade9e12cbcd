"""The package as a user first meets it: what importing it costs and what its names are."""

from __future__ import annotations

import subprocess
import sys


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
