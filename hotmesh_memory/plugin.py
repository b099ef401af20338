"""Entry point of the memory backend (group ``hotmesh.backends``)."""

from hotmesh_core.plugins import BackendPlugin

from .backend import MemoryBackend

plugin = BackendPlugin("memory", MemoryBackend, capabilities=MemoryBackend.capabilities)
