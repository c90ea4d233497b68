"""`datadiet serve` against a real Prefect server, and the Prefect UI in a real browser.

Deployments are registered by the CLI; one is triggered with `prefect deployment run --param`
and completes in the serving process; an interval schedule gets its runs created by the
server's scheduler and executed by the serving process; artifacts are read back through the API;
Debian's chromium (driven by Selenium through chromium-driver) finds the deployment and the
run's report in the UI; SIGTERM stops the serving process cleanly. Screenshots go to the test's
temp folder, and also to $DATADIET_SCREENSHOTS if set (that is how the README's pictures under
docs/ are made).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from datadiet.flows.serve import load_config, plan
from tests.flows.helpers import api_post, artifacts_of, request, wait_until

RUN_TIMEOUT_S = 240
#: Seconds between the scheduled runs: the first comes within this after registration.
SCHEDULE_EVERY_S = 30
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
NETGUARD = Path(__file__).resolve().parent / "netguard"
SRC = Path(__file__).resolve().parents[2] / "src"


def finished_run(api: str, run_id: str) -> dict | None:
    run = request("GET", f"{api}/flow_runs/{run_id}").json()
    return run if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None


@pytest.fixture(scope="module")
def served(prefect_api: str, sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[dict]:
    """`python -m datadiet serve --config cfg.yaml` running against the test server, with its
    own temp folder and every outside host lookup recorded (tests/flows/netguard)."""
    root = tmp_path_factory.mktemp("serve")
    common = {"source": str(sample_corpus), "tokenizer": "bytes", "overwrite": True,
              "storage": str(root / "storage")}
    config = root / "deployments.yaml"
    config.write_text(yaml.safe_dump({"deployments": [
        {"flow": "curate", "name": "nightly", "cron": "0 3 * * *",
         "description": "Curate the sample corpus every night",
         "parameters": {**common, "out": str(root / "curated")}},
        {"flow": "curate", "name": "frequent", "interval": SCHEDULE_EVERY_S,
         "parameters": {**common, "out": str(root / "scheduled")}},
    ]}))
    (root / "tmp").mkdir()
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_RUNNER_POLL_FREQUENCY": "2",
           "TMPDIR": str(root / "tmp"), "DATADIET_NETGUARD_LOG": str(root / "outside-hosts.log"),
           "PYTHONPATH": os.pathsep.join([str(SRC), str(NETGUARD),
                                          os.environ.get("PYTHONPATH", "")])}
    for name in ("PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK"):  # datadiet sets them
        env.pop(name, None)
    log, errors = root / "serve.log", root / "serve.err"
    with open(log, "wb") as out, open(errors, "wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "datadiet", "serve", "--config",
                                    str(config)], env=env, stdout=out, stderr=err,
                                   start_new_session=True)
    served = {"root": root, "log": log, "errors": errors, "api": prefect_api,
              "process": process}
    try:
        deployments = wait_until(
            lambda: (process.poll() is None or pytest.fail(errors.read_text()[-3000:]))
            and (found := api_post("/deployments/filter", {})) and len(found) >= 5 and found,
            120, "5 deployments")
        served["deployments"] = {d["name"]: d for d in deployments}
        wait_until(lambda: "serving 5 deployments" in log.read_text(), 60, "the runner")
        yield served
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def test_config_and_flags_plan_every_flow(tmp_path: Path) -> None:
    config = tmp_path / "d.yaml"
    config.write_text("deployments:\n  - flow: efficiency\n    name: weekly\n"
                      "    parameters: {source: a}\n")
    specs = plan(load_config(config), interval=3600)
    assert [(s.flow, s.name, s.interval) for s in specs] == [
        ("efficiency", "weekly", 3600), ("curate", "curate", None),
        ("build_prompts", "build-prompts", None), ("train_and_measure", "train-and-measure", None)]
    config.write_text("deployments:\n  - flow: curate\n    cron: 'every day'\n")
    with pytest.raises(ValueError, match="(?s)deployment 1.*bad cron"):
        load_config(config)


def test_bad_schedule_parameters_exit_2_before_serving(tmp_path: Path) -> None:
    config = tmp_path / "d.yaml"
    config.write_text("deployments:\n  - flow: curate\n    name: n\n    interval: 60\n"
                      f"    parameters: {{source: {tmp_path}/missing.jsonl, out: {tmp_path}/o}}\n")
    run = subprocess.run([sys.executable, "-m", "datadiet", "serve", "--config", str(config),
                          "--dry-run"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PREFECT_API_URL": ""})
    assert run.returncode == 2
    assert "curate/n: scheduled with parameters that do not validate" in run.stderr
    assert "missing.jsonl: no such file" in run.stderr


def test_deployment_run_with_params_from_the_prefect_cli_completes(served: dict) -> None:
    deployments = served["deployments"]
    assert set(deployments) == {"nightly", "frequent", "build-prompts", "train-and-measure",
                                "efficiency"}
    nightly = deployments["nightly"]
    assert nightly["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
    assert nightly["enforce_parameter_schema"] is True
    schema = nightly["parameter_openapi_schema"]
    # The form the UI renders: one typed field per parameter, not one object named `params`.
    assert {"source", "out", "spec", "runner", "workers"} <= set(schema["properties"])
    assert schema["properties"]["workers"]["minimum"] == 1
    assert schema["required"] == ["source", "out"]

    api = served["api"]
    # A bad parameter is refused by the server before any run exists.
    bad = request("POST", f"{api}/deployments/{nightly['id']}/create_flow_run",
                  {"parameters": {"workers": "many"}})
    assert bad.status_code in (409, 422), bad.text

    out = served["root"] / "from-cli"
    run = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", "datadiet-curate/nightly",
         "--param", f"out={out}", "--param", "spec=- exact_dedup: {}"],
        env={**os.environ, "PREFECT_API_URL": api}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout).group(1)

    flow_run = wait_until(lambda: finished_run(api, run_id), RUN_TIMEOUT_S, "the triggered run",
                          interval=2)
    assert flow_run["state"]["type"] == "COMPLETED", served["errors"].read_text()[-4000:]
    assert flow_run["name"] == "curate corpus.jsonl → from-cli/"
    assert flow_run["parameters"]["out"] == str(out)  # the override; the rest from the config
    assert flow_run["parameters"]["tokenizer"] == "bytes"
    manifest = yaml.safe_load(next(out.rglob("manifest.json")).read_text())
    assert [next(iter(step)) for step in manifest["spec"]] == ["exact_dedup"]
    artifacts = artifacts_of(run_id)
    report = artifacts["curate-nightly-report"]  # the deployment's series of reports
    assert "Kept **" in report["data"]
    served["run_id"] = run_id
    served["report_id"] = report["id"]


def test_interval_schedule_runs_are_created_by_the_server_and_executed(served: dict) -> None:
    """The scheduler (not this test) creates the runs; the serving process executes them."""
    frequent = served["deployments"]["frequent"]
    assert frequent["schedules"][0]["schedule"]["interval"] == SCHEDULE_EVERY_S

    def scheduled_runs() -> list[dict]:
        runs = api_post("/flow_runs/filter", {"flow_runs": {
            "deployment_id": {"any_": [frequent["id"]]}}})
        return [r for r in runs if r["auto_scheduled"]]

    # The scheduler creates runs ahead of their times, seconds after the deployment changed;
    # none at all means it is broken (SQLAlchemy 2.1 under Prefect 3.8: every insert fails).
    wait_until(scheduled_runs, 60, "the server's scheduler to create a run", interval=2)
    flow_run = wait_until(
        lambda: next((r for r in scheduled_runs() if r["state"]["type"] == "COMPLETED"), None),
        SCHEDULE_EVERY_S + RUN_TIMEOUT_S, "a run created by the scheduler to complete",
        interval=2)
    assert flow_run["name"] == "curate corpus.jsonl → scheduled/"
    assert next((served["root"] / "scheduled").rglob("manifest.json"), None)
    assert list((served["root"] / "scheduled").glob("*.parquet"))


def test_prefect_ui_shows_the_deployment_and_the_report(served: dict, tmp_path: Path) -> None:
    if "report_id" not in served:
        pytest.fail("the triggered-run test did not leave a report to look at")
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    ui = served["api"].removesuffix("/api")
    shots = {}
    try:
        def page_shows(text: str, timeout: float = 60) -> None:
            try:
                WebDriverWait(driver, timeout).until(
                    lambda d: text in d.find_element(By.TAG_NAME, "body").text)
            except TimeoutException:
                driver.save_screenshot(str(tmp_path / "failed.png"))
                body = driver.find_element(By.TAG_NAME, "body").text
                pytest.fail(f"{driver.current_url} never showed {text!r} (screenshot "
                            f"{tmp_path / 'failed.png'}); it shows:\n{body[:2000]}")

        driver.get(f"{ui}/deployments")
        page_shows("nightly")
        page_shows("datadiet-curate")
        shots["deployments"] = tmp_path / "prefect-deployments.png"
        driver.save_screenshot(str(shots["deployments"]))

        nightly = served["deployments"]["nightly"]
        driver.get(f"{ui}/deployments/deployment/{nightly['id']}/run")
        page_shows("rows_per_shard")  # a field of the flat form
        time.sleep(1)  # let the form finish laying out
        shots["form"] = tmp_path / "prefect-deployment-form.png"
        driver.save_screenshot(str(shots["form"]))

        driver.get(f"{ui}/artifacts/artifact/{served['report_id']}")
        page_shows("Curation report")
        page_shows("Before and after")
        WebDriverWait(driver, 30).until(lambda d: any(
            img.get_attribute("naturalWidth") not in (None, "0")
            for img in d.find_elements(By.CSS_SELECTOR, "img[src^='data:image/png']")))
        shots["report"] = tmp_path / "prefect-run-report.png"
        driver.set_window_size(1400, 1800)
        driver.save_screenshot(str(shots["report"]))
    finally:
        driver.quit()
    for path in shots.values():
        assert path.stat().st_size > 10_000
    target = os.environ.get("DATADIET_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for path in shots.values():
            shutil.copy(path, Path(target) / path.name)


def test_prefect_yaml_deploys_every_flow_onto_a_work_pool(served: dict) -> None:
    """`prefect deploy --all` with the repository's prefect.yaml, as its comments instruct."""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PREFECT_API_URL": served["api"]}
    for command in (["work-pool", "create", "datadiet", "--type", "process", "--overwrite"],
                    ["--no-prompt", "deploy", "--all"]):
        run = subprocess.run([sys.executable, "-m", "prefect", *command], cwd=repo, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    deployed = {d["name"]: d for d in api_post("/deployments/filter", {
        "work_pools": {"name": {"any_": ["datadiet"]}}})}
    assert set(deployed) == {"curate", "build-prompts", "train-and-measure", "efficiency"}
    curate_deployment = deployed["curate"]
    assert curate_deployment["entrypoint"] == "src/datadiet/flows/curation.py:curate"
    assert curate_deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"] == {
        "directory": str(repo)}
    (schedule,) = curate_deployment["schedules"]
    assert schedule["schedule"]["cron"] == "0 3 * * *" and schedule["active"] is False
    assert "source" in curate_deployment["parameter_openapi_schema"]["properties"]
    assert curate_deployment["parameters"] == {"source": "data/corpus.jsonl",
                                               "out": "runs/curated", "overwrite": True}


def test_sigterm_stops_serving_cleanly_and_nothing_reached_outside(served: dict) -> None:
    """Last of the module: it stops the serving process."""
    process = served["process"]
    assert process.poll() is None, served["errors"].read_text()[-3000:]
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=60) == 0, served["errors"].read_text()[-3000:]
    errors = served["errors"].read_text()
    assert "never awaited" not in errors and "Traceback" not in errors, errors[-3000:]
    assert list((served["root"] / "tmp").iterdir()) == []  # no runner_storage/ left behind
    outside = served["root"] / "outside-hosts.log"
    assert not outside.exists(), outside.read_text()


def test_processes_datadiet_starts_send_no_telemetry() -> None:
    """A fresh process that imports datadiet's flows (as `datadiet serve`, the demo and a flow
    run from Python do) has Prefect's server analytics and client telemetry off, so the
    embedded API it starts sends none; a user's own setting still wins."""
    probe = ("import datadiet.flows, os; from prefect.settings import get_current_settings; "
             "print(get_current_settings().server.analytics_enabled, os.environ['DO_NOT_TRACK'])")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK")}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.stdout.split() == ["False", "1"], run.stderr[-2000:]
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "true"}, timeout=120)
    assert run.stdout.split() == ["True", "1"], run.stderr[-2000:]
