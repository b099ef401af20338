"""In-memory HotMesh backend: fast, in-process, certified by ``conformance``.

Selected by configuration (``backend="memory"``), never imported by users.
"""

from .backend import MemoryBackend

__all__ = ["MemoryBackend"]
