"""Fault injection: the ``faults`` backend (a wrapper) and the soak that drives it.

``backend`` wraps any installed backend and injects crashes after commits, lost
connections (before a call, or after a commit) and perturbed wake-ups; ``soak``
runs the standard workflow shapes through it under supervised, crashing
workers and checks every invariant; ``python -m conformance.faults`` is its CLI.
"""

from .backend import CrashScope, FaultConfig, FaultsBackend, InjectedCrash, in_scope

__all__ = ["CrashScope", "FaultConfig", "FaultsBackend", "InjectedCrash", "in_scope"]
