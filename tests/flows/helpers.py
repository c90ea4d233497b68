"""Reading what a flow run left on the Prefect server, through its REST API (what the UI reads)."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

import httpx


def request(method: str, url: str, body: dict | None = None) -> httpx.Response:
    """One API call, retrying the 503 a SQLite-backed server answers on two busy cores."""
    for _ in range(15):
        response = httpx.request(method, url, json=body, timeout=60)
        if response.status_code != 503:
            return response
        time.sleep(2)
    return response


def api_post(path: str, body: dict) -> Any:
    """POST to the Prefect REST API of the current settings; the decoded answer."""
    from prefect.settings import PREFECT_API_URL

    response = request("POST", f"{PREFECT_API_URL.value()}{path}", body)
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


def _all_log_lines(ids: list[str]) -> list[str]:
    messages: list[str] = []
    while True:  # the API pages at 200; a sharded run on Dask logs more than that
        page = api_post("/logs/filter", {"logs": {"flow_run_id": {"any_": ids}},
                                         "sort": "TIMESTAMP_ASC", "limit": 200,
                                         "offset": len(messages)})
        messages += [entry["message"] for entry in page]
        if len(page) < 200:
            return messages


def log_lines(flow_run_id: UUID | str, settle_s: float = 15.0) -> list[str]:
    """Every log message of a flow run and its subflows (task runs' included), oldest first.

    Prefect ships log lines from a background worker in batches, so right after a run ends
    some may not be stored yet (seen on a loaded machine): read until two reads a second
    apart agree, for at most ``settle_s`` seconds.
    """
    ids = run_ids(flow_run_id)
    deadline = time.monotonic() + settle_s
    lines = _all_log_lines(ids)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        again = _all_log_lines(ids)
        if again == lines and lines:
            break
        lines = again
    return lines


def runs_named(flow_run_id: UUID | str) -> dict[str, list[str]]:
    """Names of the flow run and its subflows ("flows") and of all their task runs ("tasks")."""
    ids = run_ids(flow_run_id)
    flows = api_post("/flow_runs/filter", {"flow_runs": {"id": {"any_": ids}}})
    tasks = api_post("/task_runs/filter", {"flow_runs": {"id": {"any_": ids}}})
    return {"flows": [r["name"] for r in flows], "tasks": [r["name"] for r in tasks]}


def wait_until(check, timeout: float, what: str, interval: float = 1.0):  # noqa: ANN001, ANN201
    """``check()``'s first true value, polled until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
