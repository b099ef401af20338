"""The HotMesh conformance suite: certifies that a backend behaves like the reference.

Run it against any installed backend::

    pytest --pyargs conformance --hotmesh-backend=NAME

A backend declares optional features as capabilities (pluggy hook
``hotmesh_capabilities``); tests that need one it lacks are skipped, saying so.
"""
