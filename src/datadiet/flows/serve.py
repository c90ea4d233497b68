"""``datadiet serve``: register every flow as a Prefect deployment, with schedules, and serve them.

Deployments come from a YAML config (see ``examples/deployments.yaml``)::

    deployments:
      - flow: curate                 # curate | build_prompts | train_and_measure | efficiency
        name: nightly
        cron: "0 3 * * *"            # or `interval: 3600` (seconds); neither = run on demand
        timezone: UTC
        parameters: {source: data/corpus.jsonl, out: runs/curated, overwrite: true}

The parameters are the flow's own, flat (``prefect deployment run datadiet-curate/nightly
--param source=other.jsonl`` overrides one). Every flow not named in the config is still
registered, on demand, under a name of its own (``datadiet-curate/curate``,
``datadiet-build-prompts/build-prompts`` ...), so the UI offers all four with their forms. ``--cron``/``--interval`` give a schedule to
the config's deployments that have none. A scheduled deployment's parameters are validated
here, before serving: a schedule that would fail every night fails now instead.

With ``PREFECT_API_URL`` unset the deployments live in Prefect's local (ephemeral) database,
which is only useful for a quick look; point it at ``prefect server start`` to see them in the UI.

SIGTERM or Ctrl-C stops serving cleanly: runs in flight are cancelled, the runner's temporary
folder is removed, and the exit status is 0.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import signal
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from datadiet.pipeline.io import SpecError

if TYPE_CHECKING:  # the flows import Prefect; the CLI mounts this parser without paying for it
    from datadiet.flows.common import FlowParams

FLOW_NAMES = ("curate", "build_prompts", "train_and_measure", "efficiency")


def flows() -> dict[str, tuple[Any, type[FlowParams]]]:
    """Each flow and the model that checks its parameters, by the name the config uses."""
    from datadiet.flows.chain import EfficiencyParams, efficiency
    from datadiet.flows.curation import CurateParams, curate
    from datadiet.flows.prompts import PromptParams, build_prompts
    from datadiet.flows.training import TrainMeasureParams, train_and_measure

    return {"curate": (curate, CurateParams), "build_prompts": (build_prompts, PromptParams),
            "train_and_measure": (train_and_measure, TrainMeasureParams),
            "efficiency": (efficiency, EfficiencyParams)}


def default_name(flow_name: str) -> str:
    """The deployment name of a flow the config does not name: the flow's, hyphenated."""
    return flow_name.replace("_", "-")


class DeploymentSpec(BaseModel):
    """One deployment in the config file."""

    model_config = ConfigDict(extra="forbid")

    flow: str
    name: str | None = Field(None, min_length=1, description="default: the flow's name")
    cron: str | None = None
    interval: float | None = Field(None, gt=0, description="seconds between runs")
    timezone: str = "UTC"
    parameters: dict[str, Any] = Field(default_factory=dict)
    description: str | None = None
    tags: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> DeploymentSpec:
        if self.flow not in FLOW_NAMES:
            raise SpecError(f"flow {self.flow!r}: expected one of {', '.join(FLOW_NAMES)}")
        if self.name is None:
            self.name = default_name(self.flow)
        if self.cron and self.interval:
            raise SpecError(f"{self.flow}/{self.name}: give cron or interval, not both")
        if self.cron:
            check_cron(self.cron)
        return self


def check_cron(expression: str) -> None:
    """Raise ValueError naming a malformed cron expression."""
    from cronsim import CronSim, CronSimError

    try:
        CronSim(expression, datetime.datetime.now())
    except CronSimError as exc:
        raise SpecError(f"bad cron expression {expression!r}: {exc}") from exc


def load_config(path: str | Path | None) -> list[DeploymentSpec]:
    """The config's deployments; errors name the file and the entry."""
    if path is None:
        return []
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: cannot read the deployments config: {exc}") from exc
    entries = data.get("deployments") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise SpecError(f"{path}: expected a mapping with a `deployments:` list")
    specs = []
    for i, entry in enumerate(entries, start=1):
        try:
            specs.append(DeploymentSpec(**entry) if isinstance(entry, dict) else
                         DeploymentSpec.model_validate(entry))
        except ValidationError as exc:
            raise SpecError(f"{path}: deployment {i}: {exc}") from exc
    return specs


def plan(specs: list[DeploymentSpec], cron: str | None = None, interval: float | None = None,
         only: list[str] | None = None) -> list[DeploymentSpec]:
    """Config deployments (flag schedules filled in) plus a default one for each other flow."""
    chosen = only or list(FLOW_NAMES)
    unknown = sorted(set(chosen) - set(FLOW_NAMES))
    if unknown:
        raise SpecError(f"--flow {', '.join(unknown)}: expected one of {', '.join(FLOW_NAMES)}")
    out = []
    for spec in specs:
        if spec.flow not in chosen:
            continue
        if not spec.cron and not spec.interval and (cron or interval):
            spec = DeploymentSpec(**{**spec.model_dump(), "cron": cron, "interval": interval})
        out.append(spec)
    if (cron or interval) and not out:
        raise SpecError("--cron/--interval schedule the deployments of --config (a schedule "
                         "needs parameters), and there are none")
    configured = {s.flow for s in out}
    out += [DeploymentSpec(flow=name) for name in chosen if name not in configured]
    return out


def build_deployments(specs: list[DeploymentSpec]) -> list[Any]:
    """Prefect deployments; scheduled ones have their parameters validated first."""
    from prefect.schedules import Cron, Interval

    registry = flows()
    deployments = []
    for spec in specs:
        flow_obj, params_model = registry[spec.flow]
        label = f"{spec.flow}/{spec.name}"
        if spec.cron or spec.interval:
            try:
                params_model.of_call(flow_obj.fn, spec.parameters)
            except (ValidationError, ValueError) as exc:
                raise SpecError(f"{label}: scheduled with parameters that do not validate: "
                                 f"{exc}") from exc
        schedules = []
        if spec.cron:
            schedules.append(Cron(spec.cron, timezone=spec.timezone))
        elif spec.interval:
            schedules.append(Interval(datetime.timedelta(seconds=spec.interval),
                                      timezone=spec.timezone))
        deployments.append(flow_obj.to_deployment(
            name=spec.name,
            schedules=schedules or None,
            parameters=spec.parameters or None,
            description=spec.description or (flow_obj.description or "").strip().splitlines()[0],
            tags=["datadiet", *spec.tags],
            enforce_parameter_schema=True,
        ))
    return deployments


def add_serve_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``serve``."""
    p = sub.add_parser(
        "serve", help="register the Prefect flows as scheduled deployments and serve them",
        description="Register curate, build_prompts, train_and_measure and efficiency as Prefect "
        "deployments (schedules and parameters from --config) and run their flow runs until "
        "stopped. Set PREFECT_API_URL to a Prefect server to see them in its UI.")
    p.add_argument("--config", default=None, help="deployments YAML (see module docs)")
    p.add_argument("--cron", default=None, help="schedule for configured deployments without one")
    p.add_argument("--interval", type=float, default=None,
                   help="seconds between runs, for configured deployments without a schedule")
    p.add_argument("--flow", action="append", default=None, choices=FLOW_NAMES,
                   help="serve only this flow (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="most flow runs at once")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and print the deployments, do not serve")
    p.set_defaults(func=run_serve)
    return p


def run_serve(args: argparse.Namespace) -> int:
    if args.cron and args.interval:
        raise SpecError("give --cron or --interval, not both")
    if args.cron:
        check_cron(args.cron)
    specs = plan(load_config(args.config), args.cron, args.interval, args.flow)
    deployments = build_deployments(specs)
    for spec in specs:
        when = (f"cron {spec.cron!r} ({spec.timezone})" if spec.cron else
                f"every {spec.interval:g}s" if spec.interval else "on demand")
        print(f"{spec.flow}/{spec.name}: {when}", flush=True)
    if args.dry_run:
        return 0
    try:
        asyncio.run(serve_until_stopped(deployments, args.limit))
    except KeyboardInterrupt:  # Ctrl-C: the runner has cleaned up on its way out
        return 130
    return 0


async def serve_until_stopped(deployments: list[Any], limit: int | None) -> None:
    """Serve ``deployments`` until SIGTERM (or Ctrl-C), then stop the runner inside its loop.

    Why not ``prefect.serve``: its SIGTERM handler calls the runner's stop from inside the
    running loop, where that only creates a coroutine nobody awaits ("coroutine 'Runner.astop'
    was never awaited"), then exits the interpreter from the signal handler. Here the signal
    only schedules ``astop`` on the loop; the runner's own exit then cancels runs in flight and
    removes its temporary folder, and ``runner_storage/`` (shared by every runner of this
    machine) goes too if nothing else is in it.
    """
    from prefect.runner import Runner

    runner = Runner(limit=limit)
    for deployment in deployments:
        await runner.add_deployment(deployment)
    loop = asyncio.get_running_loop()

    def stop() -> None:
        if runner.started:
            loop.create_task(runner.astop())

    # Runner.start installs its own SIGTERM handler with signal.signal as it begins; the loop's
    # handler is installed once the runner has started, so it is the one that stays.
    async def install_handlers() -> None:
        while not runner.started:
            await asyncio.sleep(0.05)
        loop.add_signal_handler(signal.SIGTERM, stop)
        print(f"serving {len(deployments)} deployments; stop with Ctrl-C or SIGTERM", flush=True)

    installer = loop.create_task(install_handlers())
    try:
        await runner.start()
    finally:
        installer.cancel()
        loop.remove_signal_handler(signal.SIGTERM)
        with suppress(OSError):  # not empty: another runner of this machine is using it
            (Path(tempfile.gettempdir()) / "runner_storage").rmdir()


__all__ = ["DeploymentSpec", "add_serve_parser", "build_deployments", "load_config", "plan",
           "run_serve", "serve_until_stopped"]
