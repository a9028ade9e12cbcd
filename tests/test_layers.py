"""The package's layers: imports point down only, and only the kernel writes thread states.

These read the source (imports that run, counting those inside functions;
``if TYPE_CHECKING:`` blocks never run) rather than import it, so a wrong
edge fails here with its module and line, not as a confusing import error.
"""

from __future__ import annotations

import ast
from pathlib import Path

import socketloop

PACKAGE = Path(socketloop.__file__).parent

#: The kernel and what it stands on (docs/design.md, "Layers").
KERNEL = {
    "_address",
    "_driver",
    "_errors",
    "_forking",
    "_control",
    "_idle",
    "_kernel",
    "_lifecycle",
    "_originals",
    "_poll_epoll",
    "_poll_poll",
    "_registry",
    "_scheduler",
    "_signals",
    "_threads",
    "_timers",
    "_version",
    "_wakeup",
}
#: The services above the kernel and below the façade.
SERVICES = {
    "_asocket",
    "_connect",
    "_files",
    "_hybrid",
    "_introspect",
    "_pool",
    "_select",
    "_sockcalls",
    "_server",
    "_sync",
    "_timeouts",
    "_tls",
}
#: Where thread states and wait records may be written.
KERNEL_WRITERS = {"_scheduler", "_kernel", "_threads", "_idle"}
THREAD_PRIVATE = {"_state", "_waiting_on", "_wake_value", "_wake_exc", "_resumer"}


def _modules() -> dict[str, ast.Module]:
    return {
        path.stem: ast.parse(path.read_text(), str(path))
        for path in sorted(PACKAGE.glob("*.py"))
        if path.stem != "__main__"
    }


def _runtime_imports(tree: ast.Module, names: set[str]) -> dict[str, int]:
    """Package modules imported by ``tree`` at run time, with the first line of each."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if id(node) in skipped or not isinstance(node, ast.ImportFrom) or node.level != 1:
            continue
        targets = [node.module] if node.module else [alias.name for alias in node.names]
        for target in targets:
            if target in names:
                found.setdefault(target, node.lineno)
    return found


def _graph() -> dict[str, dict[str, int]]:
    modules = _modules()
    names = set(modules) | {"__init__"}
    return {name: _runtime_imports(tree, names) for name, tree in modules.items()}


def test_no_module_imports_itself_back_at_run_time() -> None:
    graph = _graph()
    circles = []
    for start in graph:
        # Depth-first search for a path from start back to start.
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            for target in graph.get(node, {}):
                if target == start:
                    circles.append(" -> ".join([*path, start]))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, [*path, target]))
    assert not circles, circles


def test_the_kernel_imports_nothing_above_it() -> None:
    graph = _graph()
    wrong = {
        f"{module} -> {target} (line {line})"
        for module in KERNEL
        for target, line in graph[module].items()
        if target not in KERNEL
    }
    assert not wrong, sorted(wrong)


def test_the_services_import_only_the_kernel_and_each_other() -> None:
    graph = _graph()
    wrong = {
        f"{module} -> {target} (line {line})"
        for module in SERVICES
        for target, line in graph[module].items()
        if target not in KERNEL | SERVICES
    }
    assert not wrong, sorted(wrong)


def test_only_the_kernel_writes_thread_states_and_wait_records() -> None:
    wrong = []
    for name, tree in _modules().items():
        if name in KERNEL_WRITERS:
            continue
        for node in ast.walk(tree):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr in THREAD_PRIVATE:
                    wrong.append(f"{name}:{target.lineno} writes .{target.attr}")
    assert not wrong, wrong


def test_every_module_of_the_layers_is_named_here() -> None:
    # A new module must be placed in a layer (or be above them: the façade,
    # the drop-ins, the extras), so the checks above cover it.
    above = {
        "__init__",
        "aio",
        "_api",
        "_cli",
        "_coro",
        "_hostdriver",
        "_http",
        "_loop",
        "_patch",
        "_supervisor",
        "_workers",
        "_workerproc",
        "coro",
        "gunicorn",
        "socket",
        "ssl",
        "testing",
        "wsgi",
        "_wsgiconn",
        "_wsgiresponse",
    }
    assert set(_modules()) == KERNEL | SERVICES | above
