"""The research agent of the HotMesh README, in Python.

A coordinator sets up its entity, runs an optimistic and a skeptical
perspective in parallel as hooks (sharing its entity), runs a fact checker as a
child job with its own entity (which itself runs a credibility hook), then a
synthesis hook that merges ``perspectives.synthesis`` and sets ``status:
completed``. Evidence search is deterministic and local, but runs as activities.

    python examples/research_agent.py          # embedded PostgreSQL, no setup
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from hotmesh_core import MemFlow, workflow

QUEUE = "agents"

# -- activities: the agent's tools (deterministic stand-ins for real searches) --


async def search_for_supporting_evidence(query: str) -> list[dict[str, Any]]:
    return [
        {"source": "journal-of-optimism", "claim": f"{query}: promising results", "weight": 0.8},
        {"source": "field-report", "claim": f"{query}: early adopters satisfied", "weight": 0.6},
    ]


async def search_for_counter_evidence(query: str) -> list[dict[str, Any]]:
    return [
        {
            "source": "replication-study",
            "claim": f"{query}: effect smaller than reported",
            "weight": 0.7,
        }
    ]


async def check_source_credibility(sources: list[str]) -> dict[str, float]:
    return {source: round(0.5 + 0.1 * (len(source) % 5), 2) for source in sources}


async def analyze_perspectives(perspectives: dict[str, Any]) -> dict[str, Any]:
    optimistic = perspectives.get("optimistic", {}).get("confidence", 0)
    skeptical = perspectives.get("skeptical", {}).get("confidence", 0)
    balance = round((optimistic + (1 - skeptical)) / 2, 2)
    verdict = "cautiously positive" if balance >= 0.5 else "inconclusive"
    return {"finalAssessment": verdict, "confidence": balance}


ACTIVITIES = [
    search_for_supporting_evidence,
    search_for_counter_evidence,
    check_source_credibility,
    analyze_perspectives,
]

# -- workflows and hooks -------------------------------------------------------


async def research_agent(query: str) -> dict[str, Any]:
    agent = await workflow.entity()
    await agent.set(
        {
            "query": query,
            "findings": [],
            "perspectives": {},
            "confidence": 0,
            "status": "researching",
        }
    )
    fact_check, _optimistic, _skeptical = await asyncio.gather(
        workflow.exec_child("fact-checker", "fact_check_agent", args=[query], task_queue=QUEUE),
        workflow.exec_hook(QUEUE, "optimistic_perspective", [query]),
        workflow.exec_hook(QUEUE, "skeptical_perspective", [query]),
    )
    await agent.merge({"verification": fact_check})
    await workflow.exec_hook(QUEUE, "synthesize_perspectives", [])
    return await agent.get()  # type: ignore[no-any-return]


async def optimistic_perspective(query: str, config: dict[str, str]) -> None:
    entity = await workflow.entity()
    tools = workflow.proxy_activities(activities=ACTIVITIES)
    findings = await tools.search_for_supporting_evidence(query)
    await entity.merge({"perspectives": {"optimistic": {"findings": findings, "confidence": 0.8}}})
    for finding in findings:
        await entity.append("findings", finding["claim"])
    await workflow.signal(config["signal"], {"perspective": "optimistic"})


async def skeptical_perspective(query: str, config: dict[str, str]) -> None:
    entity = await workflow.entity()
    tools = workflow.proxy_activities(activities=ACTIVITIES)
    counter = await tools.search_for_counter_evidence(query)
    await entity.merge(
        {"perspectives": {"skeptical": {"counterEvidence": counter, "confidence": 0.6}}}
    )
    await workflow.signal(config["signal"], {"perspective": "skeptical"})


async def fact_check_agent(query: str) -> dict[str, Any]:
    entity = await workflow.entity()
    await entity.set(
        {
            "query": query,
            "sources": ["journal-of-optimism", "replication-study"],
            "verifications": [],
        }
    )
    await workflow.exec_hook(QUEUE, "verify_source_credibility", [query])
    return await entity.get()  # type: ignore[no-any-return]


async def verify_source_credibility(query: str, config: dict[str, str]) -> None:
    entity = await workflow.entity()
    tools = workflow.proxy_activities(activities=ACTIVITIES)
    sources = await entity.get("sources")
    scores = await tools.check_source_credibility(sources)
    for source, score in scores.items():
        await entity.append("verifications", {"source": source, "credibility": score})
    await workflow.signal(config["signal"], scores)


async def synthesize_perspectives(config: dict[str, str]) -> None:
    entity = await workflow.entity()
    tools = workflow.proxy_activities(activities=ACTIVITIES)
    context = await entity.get()
    synthesis = await tools.analyze_perspectives(context["perspectives"])
    await entity.merge(
        {
            "perspectives": {"synthesis": synthesis},
            "confidence": synthesis["confidence"],
            "status": "completed",
        }
    )
    await workflow.signal(config["signal"], synthesis)


WORKFLOWS = [
    research_agent,
    optimistic_perspective,
    skeptical_perspective,
    fact_check_agent,
    verify_source_credibility,
    synthesize_perspectives,
]


async def main(
    app_id: str = "research", backend: str | None = None, **options: Any
) -> dict[str, Any]:
    async with MemFlow.init(app_id=app_id, backend=backend, **options) as mf:
        await mf.worker(QUEUE, workflows=WORKFLOWS, activities=ACTIVITIES)
        handle = await mf.workflow.start(
            entity="research",
            workflow_name="research_agent",
            workflow_id=f"research-{uuid.uuid4().hex[:8]}",
            args=["Does green tea improve focus?"],
            task_queue=QUEUE,
        )
        result: dict[str, Any] = await handle.result(timeout=60)
        return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main()), indent=2))
