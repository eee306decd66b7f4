"""The web app under load, through its HTTP API on loopback: `ip2p serve` in a subprocess with a small queue.

20 concurrent edit requests: each one succeeds or is told plainly that the queue is full (HTTP 503); the server
stays up and its memory stays bounded. Also the limits: upload size, pixel count and a bad file, each refused
with a clear message that names no server path.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

REQUESTS = 20
MAX_QUEUE = 4
MAX_UPLOAD_MB = 1
MAX_PIXELS = 100_000
EDIT = {"instruction": "make it blue", "steps": 8, "resolution": 32, "seed": 3}
RSS_GROWTH_LIMIT = 300 * 2**20  # transient tensors and gradio's caches, but no leak per request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`ip2p serve --model tiny` on a free loopback port: (base url, process, log path)."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "OMP_NUM_THREADS": "1",
        "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio")),
    }
    command = [sys.executable, "-m", "ip2p.cli", "serve", "--model", "tiny", "--port", str(port)]
    command += ["--concurrency", "1", "--max-queue", str(MAX_QUEUE), "--max-upload-mb", str(MAX_UPLOAD_MB)]
    command += ["--max-pixels", str(MAX_PIXELS), "--device", "cpu"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # imports of torch, diffusers and gradio on a busy machine
    while True:
        if process.poll() is not None:
            pytest.fail(f"ip2p serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/gradio_api/info", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"ip2p serve did not answer in time:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield url, process, log
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def upload(client: httpx.Client, name: str, content: bytes) -> httpx.Response:
    return client.post("/gradio_api/upload", files={"files": (name, content, "image/png")})


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def call_edit(url: str, image_path: str, **settings) -> tuple[str, object]:
    """One API edit: ("ok", (png url, metadata)), ("busy", message) or ("error", message)."""
    body = {"image": {"path": image_path, "meta": {"_type": "gradio.FileData"}}, **EDIT, **settings}
    with httpx.Client(base_url=url, timeout=120) as client:
        started = client.post("/gradio_api/call/v2/edit", json=body)
        if started.status_code == 503:
            return "busy", started.json()["detail"]
        started.raise_for_status()
        event = None
        with client.stream("GET", f"/gradio_api/call/v2/edit/{started.json()['event_id']}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    data = json.loads(line[5:])
                    return ("ok", data) if event == "complete" else ("error", data)
    return "error", "the stream ended without a result"


@pytest.fixture(scope="module")
def image_path(server):
    url, _, _ = server
    with httpx.Client(base_url=url, timeout=60) as client:
        response = upload(client, "scene.png", png_bytes(48, 40))
    response.raise_for_status()
    return response.json()[0]


def test_twenty_concurrent_requests_succeed_or_are_told_busy(server, image_path):
    url, process, log = server
    status, data = call_edit(url, image_path)  # warm-up: the first edit pays for lazy initialisation
    assert status == "ok", data
    rss_before = psutil.Process(process.pid).memory_info().rss

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
        outcomes = list(pool.map(lambda i: call_edit(url, image_path, seed=i), range(REQUESTS)))
    elapsed = time.monotonic() - started

    counts = {kind: sum(1 for k, _ in outcomes if k == kind) for kind in ("ok", "busy", "error")}
    print(f"{REQUESTS} concurrent requests in {elapsed:.1f} s: {counts}", end="; ")
    assert counts["error"] == 0, [data for kind, data in outcomes if kind == "error"]
    assert counts["ok"] >= 1
    for kind, data in outcomes:
        if kind == "busy":
            assert "Queue is full" in data
        else:
            result, metadata = data
            assert result["url"].startswith(url) and metadata["ip2p:instruction"] == EDIT["instruction"]
    seeds = sorted(int(data[1]["ip2p:seed"]) for kind, data in outcomes if kind == "ok")
    assert len(set(seeds)) == len(seeds)  # each request got its own edit

    # Still up, still editing, and memory bounded.
    assert process.poll() is None, log.read_text()[-3000:]
    status, data = call_edit(url, image_path)
    assert status == "ok", data
    growth = psutil.Process(process.pid).memory_info().rss - rss_before
    print(f"server RSS growth {growth / 2**20:.0f} MiB")
    assert growth < RSS_GROWTH_LIMIT, f"server RSS grew by {growth / 2**20:.0f} MiB"


def test_a_result_is_a_png_with_its_metadata(server, image_path):
    url, _, _ = server
    status, (result, metadata) = call_edit(url, image_path, seed=11, instruction="add a hat")
    assert status == "ok"
    picture = Image.open(io.BytesIO(httpx.get(result["url"], timeout=30).content))
    assert picture.format == "PNG" and picture.text == metadata
    assert metadata["ip2p:seed"] == "11" and metadata["ip2p:steps"] == "8"


def test_limits_give_clear_messages_without_server_paths(server):
    url, _, _ = server
    with httpx.Client(base_url=url, timeout=60) as client:
        too_big = upload(client, "big.png", b"\0" * (MAX_UPLOAD_MB * 2**20 + 1))
        assert too_big.status_code == 413 and "maximum allowed size" in too_big.text
        many_pixels = upload(client, "wide.png", png_bytes(400, 400)).json()[0]
        not_image = upload(client, "fake.png", b"not an image at all").json()[0]
    for path, expected in ((many_pixels, "exceeds the limit"), (not_image, "not an image")):
        status, data = call_edit(url, path)
        assert status == "error" and expected in data["error"], data
        assert str(Path(path).parent) not in data["error"] and "Traceback" not in data["error"]
