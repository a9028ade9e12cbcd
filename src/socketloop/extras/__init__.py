"""Integrations with third-party libraries that offer a hook for cooperative waiting.

Charter: one submodule per library (``socketloop.extras.psycopg2``,
``socketloop.extras.psycopg``), each a small ``enable()`` / ``disable()``
pair that plugs socketloop's waiting into the library's own documented
extension point.  A submodule imports its library only when it is imported
itself; nothing in socketloop imports this package, so none of these
libraries is a dependency.  Submodules must not patch the standard library
(that is ``patch()``'s job) nor change the library's behaviour outside loop
threads.
"""

from __future__ import annotations

__all__: list[str] = []
