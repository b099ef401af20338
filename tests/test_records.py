"""``revise`` builds the record ``attrs.evolve`` would, at a fraction of its cost."""

from __future__ import annotations

import attrs
import pytest

from hotmesh_core.models import ErrorInfo, Job, Step, Task
from hotmesh_core.records import revise
from hotmesh_core.retry import RetryPolicy


def test_revise_equals_evolve_for_mutable_and_frozen_records() -> None:
    job = Job(id="j", entity="e", workflow_name="w", task_queue="q", args=[1], context={"a": 1})
    revised = revise(job, status="running", version=3)
    assert revised == attrs.evolve(job, status="running", version=3)
    assert revised is not job and job.status == "pending" and job.version == 0
    assert revised.context is job.context  # unchanged fields shared, as evolve shares them
    error = ErrorInfo("ValueError", "bad", "")
    assert revise(error, message="worse") == ErrorInfo("ValueError", "worse", "")
    assert error.message == "bad"
    step = Step(job_id="j", dimension="", index=1, kind="activity", name="a")
    assert revise(step, status="done", result=2) == attrs.evolve(step, status="done", result=2)
    task = Task(queue="q", kind="run", job_id="j", dimension="", name="w", id="t")
    assert revise(task) == task and revise(task) is not task


def test_an_unknown_field_raises() -> None:
    job = Job(id="j", entity="e", workflow_name="w", task_queue="q")
    with pytest.raises(AttributeError):
        revise(job, no_such_field=1)


def test_a_class_whose_init_does_work_is_evolved() -> None:
    policy = RetryPolicy(maximum_attempts=2)
    assert revise(policy, maximum_attempts=4) == RetryPolicy(maximum_attempts=4)
    with pytest.raises(ValueError, match="at least 1"):
        revise(policy, maximum_attempts=0)  # its __attrs_post_init__ ran

    @attrs.define
    class Checked:
        n: int = attrs.field(validator=attrs.validators.instance_of(int))

    with pytest.raises(TypeError):
        revise(Checked(1), n="two")
