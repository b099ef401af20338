"""Property-based tests of the replay engine (hypothesis).

Random workflow shapes (see ``replay_shapes``) run on the memory backend while
answers arrive in random orders, signals come at random moments and workers
crash at random moments.  Whatever happens, replay must be correct:

1. the result is the plain-Python evaluation of the shape;
2. each recorded step holds the answer of its own call (never another call's);
3. every call of the shape is recorded exactly once, in the thread that made it;
   within a sequence, later calls take later indexes;
4. every thread replays over its final history issuing exactly the recorded calls
   (with gates, a last run replays or resumes each thread; without the run cache,
   every run replays);
5. each entity ends as the shape's operations make it (counters count 1..N).

``HOTMESH_PROPERTY_EXAMPLES=500 pytest tests/test_replay_properties.py`` runs a
longer search; ``HOTMESH_PROPERTY_BACKEND=postgres`` runs it against PostgreSQL.
A failure prints the scenario as JSON (shape, workers, crashes, signal delays)
and the recorded histories; hypothesis prints the ``@reproduce_failure`` blob.
Timing is real, so a failing scenario may need a few runs to fail again:
``python tests/replay_shapes.py '<scenario json>' 20 [postgres]`` runs it 20 times.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, example, given, settings
from replay_shapes import (
    Crash,
    RunReport,
    Scenario,
    check,
    describe,
    expected_result,
    number_nodes,
    run_scenario,
    scenarios,
    shapes,
    walk,
)

EXAMPLES = int(os.environ.get("HOTMESH_PROPERTY_EXAMPLES", "40"))
BACKEND = os.environ.get("HOTMESH_PROPERTY_BACKEND", "memory")

SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def assert_replay_correct(scenario: Scenario, backend: str = BACKEND) -> None:
    report = asyncio.run(run_scenario(scenario, backend))
    if currently_in_test_context():
        _note_statistics(scenario, report)
    problems = check(report)
    assert not problems, describe(report, problems)


def _note_statistics(scenario: Scenario, report: RunReport) -> None:
    """What the examples exercised (shown by ``--hypothesis-show-statistics``)."""
    event("crashes", str(report.crashes_done))
    event("crashes cancelled tasks", str(report.tasks_cancelled > 0))
    event("gates", str(scenario.gates))
    event("cached runs", str(scenario.cached))
    event("nodes", f"{len(list(walk(scenario.body))) // 5 * 5}+")


def _branch(*delays: int) -> list[dict[str, object]]:
    return [{"k": "act", "ms": ms} for ms in delays]


# The reported defect: two gathered branches of two steps; the first answer is late.
REPORTED_DEFECT = Scenario(
    body=number_nodes([{"k": "gather", "branches": [_branch(40, 0), _branch(0, 0)]}])
)

# Found by this file after the activation fix: an inline activity's answer and a
# child's answer reach the workflow in different runs (conformance test_replay_order).
CHILD_RACES_INLINE_ACTIVITY = Scenario(
    body=number_nodes(
        [
            {
                "k": "gather",
                "branches": [
                    [{"k": "act", "ms": 3}, {"k": "app"}],
                    [{"k": "child", "body": []}, {"k": "act", "ms": 0}],
                ],
            }
        ]
    )
)

# The same with a timer: a sleep answers while another branch's activity runs inline.
TIMER_RACES_INLINE_ACTIVITY = Scenario(
    body=number_nodes(
        [
            {
                "k": "gather",
                "branches": [
                    [{"k": "act", "ms": 30}, {"k": "app"}],
                    [{"k": "sleep", "ms": 10}, {"k": "act", "ms": 0}],
                ],
            }
        ]
    ),
    cached=False,
)

# And an inline command given another call's answer: the signal is delivered by one run
# while b-2 (n5) runs inline; the continuation's append then takes index 4, finds the
# other run's activity n3 there and returns its pending result (None) as the list.
SIGNAL_RACES_INLINE_ACTIVITY = Scenario(
    body=number_nodes(
        [
            {
                "k": "gather",
                "branches": [
                    [{"k": "act", "ms": 0}, {"k": "wait", "by": "outside"}, {"k": "act", "ms": 0}],
                    [{"k": "act", "ms": 0}, {"k": "act", "ms": 0}, {"k": "app"}],
                ],
            }
        ]
    ),
    cached=False,
)

ONLY_GATHERS = shapes(leaf_kinds=("act",), composite_kinds=("gather",), max_nodes=14)


@SETTINGS
@example(REPORTED_DEFECT)
@given(scenarios(ONLY_GATHERS, crashes=False))
def test_gathered_activities_replay_correctly(scenario: Scenario) -> None:
    """Activities and gathers only, no crash: answer order alone must not matter."""
    assert_replay_correct(scenario)


@SETTINGS
@example(
    Scenario(
        body=number_nodes(
            [
                {"k": "inc"},
                {
                    "k": "gather",
                    "branches": [
                        [{"k": "act", "ms": 30}, {"k": "wait", "by": "hook"}, {"k": "now"}],
                        [{"k": "hook", "body": [{"k": "app"}, {"k": "act", "ms": 0}]}],
                        [{"k": "child", "body": [{"k": "inc"}, {"k": "sleep", "ms": 20}]}],
                    ],
                },
                {"k": "wait", "by": "outside"},
                {"k": "random"},
            ]
        ),
        mode="remote",
        workers=2,
        crashes=[Crash(after_ms=20, worker=1, same_id=True)],
    )
)
@example(CHILD_RACES_INLINE_ACTIVITY)
@example(TIMER_RACES_INLINE_ACTIVITY)
@example(SIGNAL_RACES_INLINE_ACTIVITY)
@given(scenarios())
def test_random_shapes_replay_correctly_through_crashes(scenario: Scenario) -> None:
    """Every node kind, 1-3 workers, random answer orders, signals and worker crashes."""
    assert_replay_correct(scenario)


@settings(SETTINGS, max_examples=max(4, EXAMPLES // 5))
@example(SIGNAL_RACES_INLINE_ACTIVITY)
@given(scenarios())
def test_random_shapes_replay_correctly_on_postgres(scenario: Scenario) -> None:
    """The same property on PostgreSQL in every run, on a smaller budget."""
    assert_replay_correct(scenario, "postgres")


EVERY_KIND_IN_SEQUENCE = [
    {"k": "inc"},
    {"k": "act", "ms": 5},
    {"k": "app"},
    {"k": "sleep", "ms": 10},
    {"k": "wait", "by": "outside"},
    {"k": "wait", "by": "hook"},
    {"k": "now"},
    {"k": "random"},
    {"k": "child", "body": [{"k": "app"}, {"k": "act", "ms": 0}, {"k": "inc"}]},
    {"k": "hook", "body": [{"k": "inc"}, {"k": "act", "ms": 0}, {"k": "now"}]},
    {"k": "act", "ms": 0},
]


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "replaying"])
@pytest.mark.parametrize("gates", [False, True], ids=["no-gates", "gates"])
@pytest.mark.parametrize("mode", ["inline", "remote"])
def test_every_kind_in_sequence_replays_correctly(mode: str, gates: bool, cached: bool) -> None:
    """The harness itself: without gathers, one call at a time, every property holds."""
    body = number_nodes(json.loads(json.dumps(EVERY_KIND_IN_SEQUENCE)))
    scenario = Scenario(body=body, mode=mode, workers=2, gates=gates, cached=cached)
    assert_replay_correct(scenario)


@SETTINGS
@given(shapes())
def test_shapes_are_json_with_distinct_ids(body: list[dict[str, Any]]) -> None:
    assert json.loads(json.dumps(body)) == body
    ids = [node["id"] for node in walk(body)]
    assert len(ids) == len(set(ids))
    assert len(expected_result(body)) == len(body)
