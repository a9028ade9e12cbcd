"""Sphinx configuration of the socketloop documentation (``make docs``)."""

from __future__ import annotations

import inspect
import pathlib
import re
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import socketloop  # noqa: E402
import socketloop.socket  # noqa: E402
import socketloop.ssl  # noqa: E402
import socketloop.testing  # noqa: E402

# The public classes report ``socketloop`` as their module (for users'
# tracebacks); for the build, give them back the module that defines them so
# that autodoc finds their source order and [source] links point to the code.
# (inspect would look the file up through __module__: the methods' code knows.)
_SRC = (ROOT / "src").resolve()
_BY_FILE = {
    pathlib.Path(module.__file__).resolve(): name
    for name, module in list(sys.modules.items())
    if name.startswith("socketloop.") and getattr(module, "__file__", None)
}


def _defining_module(cls: type) -> str | None:
    for value in vars(cls).values():
        code = getattr(inspect.unwrap(value), "__code__", None) if callable(value) else None
        if code is not None:
            return _BY_FILE.get(pathlib.Path(code.co_filename).resolve())
    return None


for _name in socketloop.__all__:
    _value = getattr(socketloop, _name)
    if isinstance(_value, type) and _value.__module__ == "socketloop":
        _value.__module__ = _defining_module(_value) or "socketloop"

project = "socketloop"
author = "socketloop developers"
copyright = "socketloop developers"
release = version = socketloop.__version__

extensions = [
    "myst_parser",  # the guides are Markdown
    "sphinx.ext.autodoc",  # the reference comes from the docstrings
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# The database drivers and the HTTP parser are extras, not the docs': document
# the modules that use them without them.
autodoc_mock_imports = ["httptools", "psycopg", "psycopg2"]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "furo"
html_title = f"socketloop {release}"
html_show_sourcelink = False


# Signatures with generics read badly as rendered ("~typing.~P",
# "~socketloop._loop.R"): show the bare names, as the source spells them.
_QUALIFIERS = re.compile(r"~?(?:typing\.|collections\.abc\.|socketloop\._\w+\.|_socket\.)~?")


def _plain_signature(
    app: object,
    what: str,
    name: str,
    obj: object,
    options: object,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None]:
    def clean(text: str | None) -> str | None:
        return None if text is None else _QUALIFIERS.sub("", text).replace("~", "")

    return clean(signature), clean(return_annotation)


def setup(app: Any) -> None:
    app.connect("autodoc-process-signature", _plain_signature)
