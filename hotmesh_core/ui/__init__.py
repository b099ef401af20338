"""``hotmesh ui``: a local web dashboard of an app's runs, their timelines and memory.

Needs the optional extra ``ui`` (``pip install "hotmesh[ui]"``: Starlette,
Jinja2, uvicorn). Nothing is imported here, so ``hotmesh`` starts as fast
with or without it; :func:`hotmesh_core.ui.app.create_app` builds the ASGI
application over an open client, and :mod:`hotmesh_core.ui.command` is the
command line.
"""
