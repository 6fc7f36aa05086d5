"""Shared pytest fixtures.

Pipeline fixtures (prefixed ``pipeline_``/``ray_``): a real local Ray cluster, a tiny-checkpoint
cache folder, Hydra config composition and Parquet writing helpers; ``s3_server``/``bucket``: a real
S3 API server (moto) on loopback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pipeline_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where replicas build the tiny random checkpoint (model.cache_dir), shared by all tests."""
    return tmp_path_factory.mktemp("pipeline-cache")


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray instance for one test module (4 logical CPUs on this 2-core box)."""
    import ray

    # no token auth prompt/warning for a throwaway local cluster; no Hub retries (it is unreachable)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def pipeline_cfg(tmp_path: Path, pipeline_cache_dir: Path) -> Callable[..., Any]:
    """Compose the pipeline's Hydra config with overrides; defaults to the tiny model and tmp output."""
    from hydra import compose, initialize_config_dir

    import pipeline.config  # noqa: F401  (registers the schema)

    def make(*overrides: str, out: Path | None = None) -> Any:
        base = [
            "model=tiny-random",
            f"model.cache_dir={pipeline_cache_dir}",
            f"output.dir={out or tmp_path / 'job'}",
            "output.progress=false",
        ]
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            return compose("config", overrides=[*base, *overrides])

    return make


@pytest.fixture
def pipeline_parquet(tmp_path: Path) -> Callable[..., Path]:
    """Write rows (a list of dicts, or a pyarrow table) as a Parquet file under tmp_path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(rows: Any, name: str = "scripts.parquet", schema: Any = None) -> Path:
        path = tmp_path / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
        pq.write_table(table, path)
        return path

    return write


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium through chromedriver (selenium), as .ci/run installs them."""
    import shutil

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(flag)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    import tempfile

    profile = tempfile.mkdtemp(prefix="dia-test-chromium-")  # else Chromium leaves one in /tmp per run
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_service():
    """moto's S3 server on a loopback port, once for the session, checking credentials (after the
    first three requests, which make the one IAM user whose key may use S3); yields the standard AWS
    variables that point at it."""
    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto's S3 server did not start")
            time.sleep(0.2)
    import boto3

    endpoint = f"http://127.0.0.1:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                       aws_secret_access_key="setup")
    iam.create_user(UserName="pipeline")
    key = iam.create_access_key(UserName="pipeline")["AccessKey"]
    iam.put_user_policy(UserName="pipeline", PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    yield {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
           "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"], "AWS_REGION": "us-east-1"}
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def s3_server(s3_service, monkeypatch):
    """A boto3 client of the session's S3 server, with the standard AWS variables pointing at it for
    this test only (the pipeline reads them; other tests must not see them). The client gets its keys
    explicitly: boto3's default session keeps the first credentials it ever resolved."""
    import boto3

    for name, value in s3_service.items():
        monkeypatch.setenv(name, value)
    return boto3.client("s3", endpoint_url=s3_service["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id=s3_service["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=s3_service["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture
def bucket(s3_server, request):
    name = request.node.name.lower().replace("_", "-")[:50].strip("-")
    s3_server.create_bucket(Bucket=name)
    return name
