"""Reading what a flow run left on the Prefect server, through its REST API (what the UI reads)."""

from __future__ import annotations

from uuid import UUID

import httpx


def api_post(path: str, body: dict) -> list[dict]:
    """POST a filter to the Prefect REST API of the current settings."""
    from prefect.settings import PREFECT_API_URL

    response = httpx.post(f"{PREFECT_API_URL.value()}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def run_ids(flow_run_id: UUID | str) -> list[str]:
    """The flow run and its subflow runs, to any depth."""
    ids, frontier = [str(flow_run_id)], [str(flow_run_id)]
    while frontier:
        children = api_post("/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {
            "any_": frontier}}})
        frontier = [c["id"] for c in children]
        ids += frontier
    return ids


def task_run_states(flow_run_id: UUID | str) -> list[str]:
    """Final state names of every task run of a flow run and its subflows."""
    runs = api_post("/task_runs/filter", {"flow_runs": {"id": {"any_": run_ids(flow_run_id)}}})
    return [r["state"]["name"] for r in runs if r.get("state")  # a subflow's stand-in is no task
            and not r["state"]["state_details"].get("child_flow_run_id")]


def artifacts_of(flow_run_id: UUID | str) -> dict[str, dict]:
    """Artifacts of a flow run and its subflows, by key."""
    found = api_post("/artifacts/filter", {"artifacts": {"flow_run_id": {
        "any_": run_ids(flow_run_id)}}})
    return {a["key"]: a for a in found}
