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


def test_every_public_submodule_is_an_attribute_of_the_package_without_importing_it() -> None:
    import socketloop

    for name in PUBLIC_SUBMODULES - {"socketloop"}:
        assert name == "coro" or name in socketloop._LAZY_SUBMODULES, name


def test_importing_socketloop_imports_no_public_submodule_but_coro() -> None:
    out = run_python(
        "import sys, socketloop\n"
        "print(sorted(m for m in sys.modules if m.startswith('socketloop.')"
        " and not m.startswith('socketloop._')))"
    )
    assert out == "['socketloop.coro']"


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


PUBLIC_SUBMODULES = {name.removeprefix("socketloop.") for name in public_modules()}


def test_socketloop_and_socketloop_coro_offer_the_same_public_names() -> None:
    import socketloop

    # Only the submodule itself and transfer (symmetric threads only) differ.
    assert set(socketloop.__all__) - {"coro"} == set(socketloop.coro.__all__) - {"transfer"}


def test_the_coro_module_offers_the_same_classes_except_its_loop() -> None:
    import socketloop

    shared = set(socketloop.__all__) & set(socketloop.coro.__all__) - {"Loop"}
    classes = [name for name in shared if isinstance(getattr(socketloop, name), type)]
    assert {"Queue", "Event", "ThreadExit", "Server"} <= set(classes)
    for name in classes:
        assert getattr(socketloop.coro, name) is getattr(socketloop, name), name
    assert socketloop.coro.Loop is socketloop.CoroLoop


@pytest.mark.parametrize("module_name", ["socketloop", "socketloop.coro"])
def test_the_namespace_holds_only_public_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    leaked = {
        name for name in vars(module) if not name.startswith("_") and name not in module.__all__
    } - PUBLIC_SUBMODULES
    assert not leaked, f"internal names in {module_name}: {sorted(leaked)}"


@pytest.mark.parametrize("module_name", ["socketloop", "socketloop.coro"])
def test_public_classes_report_socketloop_as_their_module(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in module.__all__:
        value = getattr(module, name)
        if isinstance(value, type):
            assert value.__module__ == "socketloop", f"{name}: {value.__module__}"


def test_an_error_is_shown_under_the_name_users_import() -> None:
    import traceback

    from socketloop import BusyResourceError

    shown = traceback.format_exception_only(BusyResourceError("taken"))
    assert shown == ["socketloop.BusyResourceError: taken\n"]


@pytest.mark.parametrize("module_name", ["socketloop", "socketloop.coro"])
def test_a_wrong_keyword_to_a_module_function_names_the_function(module_name: str) -> None:
    module = importlib.import_module(module_name)
    with pytest.raises(TypeError, match=r"^connect\(\) got an unexpected keyword argument"):
        module.connect("127.0.0.1", 1, no_such_option=1)


def test_the_version_is_the_one_in_pyproject() -> None:
    import pathlib
    import re

    import socketloop

    pyproject = (pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    match = re.search(r'^version = "([^"]+)"', pyproject, re.M)
    assert match is not None
    assert match[1] == socketloop.__version__
