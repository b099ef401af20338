"""What `hotmesh worker examples.greeter:served --queue hello` serves (see the README):
the demo's workflow and activity (``hotmesh_core.demo``, the README's first program)."""

from __future__ import annotations

from hotmesh_core.demo import greet, hello

# The worker's target: workflows and activities by list (a module or an object
# with these two attributes, or a plain list of workflows, work too).
served = {"workflows": [hello], "activities": [greet]}
