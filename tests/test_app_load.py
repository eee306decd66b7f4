"""The web app under load, through its HTTP API on loopback: `ip2p serve` in a subprocess with a small queue.

20 concurrent requests, good and bad uploads mixed (the damaged-file corpus of tests/damaged_images.py): each one
gets a result, a one-line refusal or a plain 'queue full' (HTTP 503); the server stays up and its peak memory
stays bounded. Also the limits (upload size, pixel count, a bad file) and malformed API inputs, each refused
with a clear message that names no server path. The full measurement (100 requests from 20 clients, a client
that walks away from a long edit) is benchmarks/app_load.py, run here as a slow test.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import app_load  # noqa: E402 (benchmarks/app_load.py: the load and its classification, shared)

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


# a server in a subprocess (about 20 s to start on a 2-core CPU): kept out of the default suite; CI runs it
pytestmark = pytest.mark.slow


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


def test_twenty_concurrent_good_and_bad_uploads_are_each_answered(server, image_path):
    """20 clients at once, 8 of them with damaged, not-image, oversized or too-big files: every request gets a
    result, a one-line refusal or 'queue full'; the server still edits after, its peak RSS bounded."""
    url, process, log = server
    status, data = call_edit(url, image_path)  # warm-up: the first edit pays for lazy initialisation
    assert status == "ok", data
    rss_idle = psutil.Process(process.pid).memory_info().rss

    uploads = app_load.mixed_uploads(REQUESTS, seed=1)
    with app_load.PeakRss(process.pid) as rss:
        start = time.monotonic()
        outcomes = app_load.run_load(url, uploads, clients=REQUESTS)
        elapsed = time.monotonic() - start
    report = app_load.Report(outcomes, elapsed, rss_idle / 2**20, rss.peak / 2**20, app_load.server_up(url))
    print(app_load.table(report))

    assert not report.wrong, [(o.upload.name, o.status, o.message) for o in report.wrong]
    assert report.up_after, log.read_text()[-3000:]
    assert any(o.status == "ok" for o in outcomes)  # the bad ones' messages: test_limits_give_clear_messages
    for o in outcomes:
        if o.status == "busy":
            assert "Queue is full" in o.message
        elif o.status == "refused" and o.upload.kind != "too-big":
            assert o.message.startswith(f"The uploaded image {o.upload.name!r}: "), o.message
    growth = (rss.peak - rss_idle) / 2**20
    assert growth < RSS_GROWTH_LIMIT / 2**20, f"server RSS peaked {growth:.0f} MiB above idle"


def test_malformed_api_inputs_are_refused_with_a_message(server, image_path):
    """Inputs that gradio itself refuses before the app sees them still get a message, not an empty error."""
    url, _, _ = server
    cases = [
        ({"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}, "must be a file uploaded"),
        ("scene.png", "must be a file reference"),
        ({"path": image_path, "meta": {"_type": "gradio.FileData"}}, "instruction must be text"),
    ]
    with httpx.Client(base_url=url, timeout=60) as client:
        for image, expected in cases:
            body = {"image": image, **EDIT, "instruction": 5 if "instruction" in expected else "x"}
            event_id = client.post("/gradio_api/call/v2/edit", json=body).json()["event_id"]
            text = client.get(f"/gradio_api/call/v2/edit/{event_id}").text
            error = json.loads(text.split("data:", 1)[1].strip())["error"]
            assert error and expected in error, text


def test_a_client_that_walks_away_frees_its_slot(server):
    """A 400-step edit (about half a minute here) abandoned after 0.5 s: the next request is served within the
    time the queue takes to notice the closed stream, not after the abandoned edit's last step."""
    url, _, _ = server
    probe = app_load.disconnect_probe(url, long_steps=400, baseline=False)
    assert probe["slot_free_after_s"] < 12, probe


@pytest.mark.slow
def test_hundred_requests_from_twenty_clients_and_a_client_that_walks_away():
    """The full measurement of benchmarks/app_load.py (in-process server): 100 requests, 20 clients."""
    demo, url = app_load.serve_tiny()
    try:
        report = app_load.measure(url, os.getpid(), requests=100, clients=20, long_steps=100)
    finally:
        demo.close()
    print(app_load.table(report))
    assert not report.wrong, [(o.upload.name, o.status, o.message) for o in report.wrong]
    assert report.up_after and len(report.outcomes) == 100
    assert report.rss_peak_mb - report.rss_idle_mb < RSS_GROWTH_LIMIT / 2**20
    # The walked-away edit is not stopped mid-way: the slot is free once it ends, not much later.
    d = report.disconnect
    assert d["slot_free_after_s"] < d["long_edit_s"] + 30, d


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
