"""A real Prefect server for the flow tests, started once per session on a loopback port.

The server gets its own PREFECT_HOME (and so its own SQLite database) in a temp folder, with
analytics off; the first start runs the database migrations, which takes a while on two cores,
so the wait is generous. Every flow the tests run in this process reports to it, as do the Dask
workers and the `datadiet serve` process they start.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="datadiet-prefect-home-"))
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)  # nothing of the run stays in $TMPDIR
os.environ["PREFECT_HOME"] = str(_HOME / "client")  # this process: no writes to ~/.prefect
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# ... except the runs' own loggers: what a flow says about its run is what the tests read back.
os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "INFO")
os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "INFO")

SERVER_START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server not healthy after {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """Start ``prefect server start`` on 127.0.0.1; yield its API URL; stop it at the end."""
    port = free_port()
    home = _HOME / "server"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": "", "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
           # SQLite on two busy cores: give queries time rather than answering 503.
           "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
           "PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT": "30"}
    log = home / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_for_health(api, process, log, SERVER_START_TIMEOUT_S)
        yield api
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def prefect_api(prefect_server: str) -> Iterator[str]:
    """Point this process's Prefect client at the test server for the whole session."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    os.environ["PREFECT_API_URL"] = prefect_server
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        yield prefect_server
    os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """The demo corpus: real WikiText and Doyle paragraphs with planted copies and junk."""
    from datadiet.experiments.corpus import build_sample_corpus

    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    build_sample_corpus(path, n_base=120, shared_data=shared_data)
    return path
