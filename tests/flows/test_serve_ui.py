"""`datadiet serve` against a real Prefect server, and the Prefect UI in a real browser.

Deployments are registered by the CLI, one is triggered through the REST API and completes in
the serving process, its artifacts are read back through the API, and Debian's chromium (driven
by Selenium through chromium-driver) finds the deployment and the run's report in the UI.
Screenshots go to the test's temp folder, and also to $DATADIET_SCREENSHOTS if set (that is how
the README's pictures under docs/ are made).
"""

from __future__ import annotations

import os
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
from datadiet.pipeline.io import MANIFEST_FILE
from tests.flows.helpers import api_post, artifacts_of, request

RUN_TIMEOUT_S = 240
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def wait_until(check, timeout: float, what: str, interval: float = 1.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def served(prefect_api: str, sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[dict]:
    """`python -m datadiet serve --config cfg.yaml` running against the test server."""
    root = tmp_path_factory.mktemp("serve")
    config = root / "deployments.yaml"
    config.write_text(yaml.safe_dump({"deployments": [{
        "flow": "curate", "name": "nightly", "cron": "0 3 * * *",
        "description": "Curate the sample corpus every night",
        "parameters": {"source": str(sample_corpus), "out": str(root / "curated"),
                       "tokenizer": "bytes", "overwrite": True, "storage": str(root / "storage")},
    }]}))
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_RUNNER_POLL_FREQUENCY": "2",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    log = root / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "datadiet", "serve", "--config",
                                    str(config)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deployments = wait_until(
            lambda: (process.poll() is None or pytest.fail(log.read_text()[-3000:]))
            and (found := api_post("/deployments/filter", {})) and len(found) >= 4 and found,
            120, "4 deployments")
        yield {"deployments": {d["name"]: d for d in deployments}, "root": root, "log": log,
               "api": prefect_api}
    finally:
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
        ("efficiency", "weekly", 3600), ("curate", "datadiet", None),
        ("build_prompts", "datadiet", None), ("train_and_measure", "datadiet", None)]
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


def test_deployment_triggered_through_the_api_completes_with_artifacts(served: dict) -> None:
    deployments = served["deployments"]
    assert set(deployments) == {"nightly", "datadiet"} or len(deployments) == 4
    nightly = next(d for d in deployments.values() if d["name"] == "nightly")
    assert nightly["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
    assert nightly["enforce_parameter_schema"] is True
    schema = nightly["parameter_openapi_schema"]
    assert "params" in schema["properties"]  # the typed form the UI renders

    api = served["api"]
    # A bad parameter is refused by the server before any run exists.
    bad = request("POST", f"{api}/deployments/{nightly['id']}/create_flow_run",
                  {"parameters": {"params": {"source": 3}}})
    assert bad.status_code in (409, 422), bad.text

    created = request("POST", f"{api}/deployments/{nightly['id']}/create_flow_run", {})
    created.raise_for_status()
    run_id = created.json()["id"]

    def finished() -> dict | None:
        run = request("GET", f"{api}/flow_runs/{run_id}").json()
        return run if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

    run = wait_until(finished, RUN_TIMEOUT_S, "the triggered run", interval=2)
    assert run["state"]["type"] == "COMPLETED", served["log"].read_text()[-4000:]
    artifacts = artifacts_of(run_id)
    assert "Kept **" in artifacts["datadiet-curate-report"]["data"]
    assert (served["root"] / "curated" / MANIFEST_FILE).exists()
    served["run_id"] = run_id
    served["report_id"] = artifacts["datadiet-curate-report"]["id"]


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

        nightly = next(d for d in served["deployments"].values() if d["name"] == "nightly")
        driver.get(f"{ui}/deployments/deployment/{nightly['id']}/run")
        page_shows("Source")
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
    assert curate_deployment["entrypoint"] == "src/datadiet/flows/curate.py:curate"
    assert curate_deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"] == {
        "directory": str(repo)}
    (schedule,) = curate_deployment["schedules"]
    assert schedule["schedule"]["cron"] == "0 3 * * *" and schedule["active"] is False
    assert "params" in curate_deployment["parameter_openapi_schema"]["properties"]
