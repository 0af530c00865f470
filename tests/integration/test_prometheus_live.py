"""Issue 26, item 5, for real: Debian's Prometheus scrapes a real server in the default layout
(`--workers auto`) under plain load -- MNIST test digits, and a few invalid requests -- and every
dashboard query not marked "Empty until" an event returns data, and the drift alert stays quiet.
Then the server is fed non-digits and the drift alert fires.

The shipped rules are loaded as written but for the drift alert's `for:`, set to 0s so that it
fires within the test's seconds rather than after 15 minutes (the promtool unit tests in
infra/prometheus/alerts_test.yml check the durations themselves).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from support.net import free_port
from support.server import start_server, stop_server

from digitserve.data import load_mnist

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "infra" / "grafana" / "digitserve.json"
ALERTS = ROOT / "infra" / "prometheus" / "alerts.yml"
EMPTY_UNTIL = "Empty until"
GRAFANA_VARIABLES = {"$__rate_interval": "20s", "$__interval": "5s", "$__range": "1h", "$model": ".*"}
LOAD_S = 8.0


def png_b64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"DIGITSERVE_WORKERS": "auto", "DIGITSERVE_MODELS": "cnn", "DIGITSERVE_DRIFT_WINDOW": "200"}
    process, url = start_server(env, log_path=tmp_path_factory.mktemp("logs") / "server.log")
    yield url
    assert stop_server(process) == 0


@pytest.fixture(scope="module")
def prometheus(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus is not installed: run `make system-deps`"
    folder = tmp_path_factory.mktemp("prometheus")
    shipped = ALERTS.read_text()
    drift = shipped.index("alert: DigitserveAnswerDrift")
    rules = shipped[:drift] + re.sub(r"for: \S+", "for: 0s", shipped[drift:], count=1)
    (folder / "alerts.yml").write_text(rules)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [
            {"job_name": "digitserve", "static_configs": [{"targets": [server.removeprefix("http://")]}]}
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    command = [
        binary,
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with (folder / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (folder / "prometheus.log").read_text()[-2000:]
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def plain_load(url: str, seconds: float) -> int:
    """MNIST test digits, two at a time, from 4 threads, and one invalid request in 20; every
    answer is checked (a failure fails the test). Returns the requests sent."""
    test = load_mnist("test")
    digits = [png_b64(image) for image in test.images[:400]]
    sent, errors = [0], []
    stop = time.monotonic() + seconds

    def client(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            i = offset
            while time.monotonic() < stop and not errors:
                i += 4
                if i % 20 == 0:
                    r = http.post("/v1/models/cnn/predict", json={"images": []})
                    expected = 422
                else:
                    r = http.post("/v1/models/cnn/predict", json={"images": digits[i % 400 : i % 400 + 2]})
                    expected = 200
                if r.status_code != expected:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                sent[0] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    return sent[0]


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=30)
    assert r.status_code == 200, f"{expr}: {r.text[:300]}"
    result: list[dict[str, Any]] = r.json()["data"]["result"]
    return result


def panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in container.get("panels", []):
        yield panel
        yield from panels(panel)


def firing(prometheus: str) -> dict[str, str]:
    """Alerts pending or firing, by name."""
    alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=30).json()["data"]["alerts"]
    return {a["labels"]["alertname"]: a["state"] for a in alerts}


def test_every_dashboard_query_has_data_under_plain_load_and_drift_fires_on_non_digits(
    server: str, prometheus: str
) -> None:
    assert plain_load(server, LOAD_S) > 50
    time.sleep(2)  # two more scrapes and rule evaluations
    dashboard = json.loads(DASHBOARD.read_text())
    checked, empty = 0, []
    for panel in panels(dashboard):
        if EMPTY_UNTIL in panel.get("description", "") or not panel.get("targets"):
            continue
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            checked += 1
            if not query(prometheus, expr):
                empty.append(f"{panel['title']!r}: {target['expr']}")
    assert checked >= 8 and not empty, f"{len(empty)} of {checked} queries returned nothing: {empty}"
    assert "DigitserveAnswerDrift" not in firing(prometheus), "the drift alert fired on plain MNIST digits"
    drift = query(prometheus, "max(digitserve_drift)")
    assert drift and float(drift[0]["value"][1]) < 0.2

    square = np.zeros((28, 28), np.uint8)
    square[3:25, 3:25] = 255  # not a digit, whichever way the model looks at it
    with httpx.Client(base_url=server, timeout=30) as http:
        for _ in range(12):  # 768 answers on one connection: over its worker's window of 200
            r = http.post("/v1/models/cnn/predict", json={"images": [png_b64(square)] * 64})
            assert r.status_code == 200 and r.json()["predictions"][0]["is_digit"] is False
    deadline = time.monotonic() + 30
    while firing(prometheus).get("DigitserveAnswerDrift") != "firing" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert firing(prometheus).get("DigitserveAnswerDrift") == "firing", firing(prometheus)
    (series,) = [s for s in query(prometheus, 'digitserve_drift{signal="answers"}')]
    assert float(series["value"][1]) > 0.5
