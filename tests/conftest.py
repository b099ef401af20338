pytest_plugins = ["hotmesh_core.testing"]
