"""The web app under load and faults, measured: good and bad uploads from concurrent clients through the HTTP API.

The app (``ip2p.app.build_app`` over the tiny model, 32 px) is served in this process on a free loopback port with
``ip2p serve``'s defaults (one edit at a time, a queue of 16) and small upload limits. Clients, each in a thread
with its own HTTP connection, send requests one after another: a good PNG, or a file from the damaged-file
corpus (``tests/damaged_images.py``: not-images, formats with no reader, truncated and corrupted files, headers
claiming too many pixels) or a file above the upload limit. Every request must be answered: a result, a refusal
with a one-line message (never empty, never "failed on the server") or "queue full" (HTTP 503). Reported:
outcomes by kind of input, latencies, the server's peak RSS (sampled every 20 ms), whether the server still edits
afterwards, and how long after a client walks away from a long edit the slot serves the next request.

Usage:
    python benchmarks/app_load.py [--requests 100] [--clients 20] [--long-steps 100]

Exits 1 when a request is unanswered or wrongly answered, the server is down afterwards, or the peak RSS grew
by more than ``--rss-limit-mb`` over the idle server.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from damaged_images import MAX_PIXELS, corpus  # noqa: E402 (the corpus lives with the tests)

MAX_UPLOAD_MB = 1
EDIT = {"instruction": "make it blue", "steps": 8, "resolution": 32}
SERVER_FAULT = "failed on the server"


@dataclass(frozen=True)
class Upload:
    """One request's input: a file name, its bytes, and whether the app must edit it ("ok"), refuse it
    ("refused") or may do either ("either", damaged data that a decoder may still read)."""

    name: str
    data: bytes
    expect: str
    kind: str  # "good", "too-big", or the corpus's kind of refusal / "damaged"


@dataclass
class Outcome:
    upload: Upload
    status: str  # "ok", "refused", "busy" or "wrong"
    message: str
    seconds: float


@dataclass
class Report:
    outcomes: list[Outcome]
    elapsed_s: float
    rss_idle_mb: float
    rss_peak_mb: float
    up_after: bool
    disconnect: dict[str, float] = field(default_factory=dict)

    @property
    def wrong(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "wrong"]


def png_bytes(width: int = 48, height: int = 40, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def mixed_uploads(count: int, seed: int = 0, bad_fraction: float = 0.4) -> list[Upload]:
    """``count`` inputs: good PNGs and, in ``bad_fraction`` of them, corpus files (every refused case before
    damaged ones) and one file above the upload limit, shuffled."""
    rng = random.Random(seed)
    cases = corpus(full=False)
    refused = [c for c in cases if c.expect == "refused"]
    damaged = [c for c in cases if c.expect == "either"]
    rng.shuffle(damaged)
    bad = [Upload("big.png", b"\0" * (MAX_UPLOAD_MB * 2**20 + 1), "refused", "too-big")]
    bad += [Upload(c.name, c.data, c.expect, c.kind or "other refused") for c in refused]
    bad += [Upload(c.name, c.data, c.expect, "damaged") for c in damaged]
    n_bad = round(count * bad_fraction)
    bad = (bad * (n_bad // len(bad) + 1))[:n_bad]
    good = [Upload(f"good-{i}.png", png_bytes(seed=i), "ok", "good") for i in range(count - n_bad)]
    uploads = good + bad
    rng.shuffle(uploads)
    return uploads


# -- the server ----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_tiny(max_queue: int = 16, concurrency: int = 1):
    """The app over the tiny model at 32 px, served in this process: (demo, url). ``demo.close()`` stops it."""
    from ip2p.app import AppDefaults, ServeConfig, build_app, launch
    from ip2p.pipeline import EditPipeline

    pipe = EditPipeline.from_pretrained("tiny", device="cpu")
    demo = build_app(
        pipe, AppDefaults(steps=EDIT["steps"], resolution=EDIT["resolution"]), max_pixels=MAX_PIXELS
    )
    config = ServeConfig(
        port=free_port(), max_queue=max_queue, concurrency=concurrency, max_upload_mb=MAX_UPLOAD_MB
    )
    return demo, launch(demo, config, block=False, quiet=True)


class PeakRss:
    """The peak resident memory of process ``pid``, sampled in a thread every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.process, self.interval, self.peak = psutil.Process(pid), interval, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._done.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


# -- the clients ---------------------------------------------------------------------------------------------
def upload_file(client: httpx.Client, name: str, data: bytes) -> tuple[str | None, str]:
    """POST a file to the app: (its server path, "") or (None, the refusal's text)."""
    response = client.post("/gradio_api/upload", files={"files": (name, data, "application/octet-stream")})
    if response.status_code != 200:
        return None, f"HTTP {response.status_code}: {response.text[:200]}"
    return response.json()[0], ""


def call_edit(client: httpx.Client, image_path: str, **settings) -> tuple[str, object]:
    """One API edit: ("ok", [result, metadata]), ("busy", message) or ("error", message or None)."""
    body = {"image": {"path": image_path, "meta": {"_type": "gradio.FileData"}}, **EDIT, **settings}
    started = client.post("/gradio_api/call/v2/edit", json=body)
    if started.status_code == 503:
        return "busy", started.json().get("detail", "")
    started.raise_for_status()
    event = None
    with client.stream("GET", f"/gradio_api/call/v2/edit/{started.json()['event_id']}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                data = json.loads(line[5:])
                return ("ok", data) if event == "complete" else ("error", (data or {}).get("error"))
    return "error", None


def request(client: httpx.Client, upload: Upload, seed: int) -> Outcome:
    """Upload then edit ``upload``, classified against what the app must do with it."""
    start = time.monotonic()
    try:
        path, refusal = upload_file(client, upload.name, upload.data)
        status, data = ("error", refusal) if path is None else call_edit(client, path, seed=seed)
    except httpx.HTTPError as exc:
        status, data = "error", None
        refusal = f"no answer ({type(exc).__name__}: {exc})"
    seconds = time.monotonic() - start
    message = data if isinstance(data, str) else ""
    if status == "busy":
        return Outcome(upload, "busy", message, seconds)
    if status == "ok":
        return Outcome(upload, "ok" if upload.expect != "refused" else "wrong", "", seconds)
    clear = bool(message) and SERVER_FAULT not in message and "\n" not in message
    good = upload.expect != "ok" and clear
    return Outcome(upload, "refused" if good else "wrong", message or refusal or "(an empty error)", seconds)


def run_load(url: str, uploads: list[Upload], clients: int) -> list[Outcome]:
    """Send ``uploads`` from ``clients`` concurrent clients, each its share one after another."""
    shares = [list(enumerate(uploads))[i::clients] for i in range(clients)]

    def client_run(share):
        with httpx.Client(base_url=url, timeout=300) as client:
            return [request(client, upload, seed=i) for i, upload in share]

    with ThreadPoolExecutor(max_workers=clients) as pool:
        return [outcome for share in pool.map(client_run, shares) for outcome in share]


def disconnect_probe(url: str, long_steps: int, baseline: bool = True) -> dict[str, float]:
    """A client starts a long edit and walks away after 0.5 s; how long until the next request is served.

    Returns the seconds from the walk-away until the next request completes and, with ``baseline``, the long
    edit's own duration (undisturbed) and a short edit's, for scale."""
    times = {}
    with httpx.Client(base_url=url, timeout=300) as client:
        path, refusal = upload_file(client, "scene.png", png_bytes())
        assert path, refusal
        for name, steps in (("short_edit_s", EDIT["steps"]), ("long_edit_s", long_steps)) if baseline else ():
            start = time.monotonic()
            status, data = call_edit(client, path, seed=1, steps=steps)
            assert status == "ok", data
            times[name] = time.monotonic() - start

        started = client.post(
            "/gradio_api/call/v2/edit",
            json={"image": {"path": path, "meta": {"_type": "gradio.FileData"}}, **EDIT, "steps": long_steps},
        )
        started.raise_for_status()
        try:  # listen 0.5 s (the edit is running), then close the connection: the client is gone
            stream_url = f"/gradio_api/call/v2/edit/{started.json()['event_id']}"
            with client.stream("GET", stream_url, timeout=httpx.Timeout(300, read=0.5)) as stream:
                for _ in stream.iter_lines():
                    pass
            raise AssertionError(f"the {long_steps}-step edit ended within 0.5 s; give it more steps")
        except httpx.ReadTimeout:
            pass
    left = time.monotonic()
    with httpx.Client(base_url=url, timeout=300) as client:
        status, data = call_edit(client, path, seed=2)
    assert status == "ok", data
    return {**times, "slot_free_after_s": time.monotonic() - left}


def server_up(url: str) -> bool:
    """The server answers and still edits."""
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            path, _ = upload_file(client, "after.png", png_bytes(seed=99))
            return path is not None and call_edit(client, path, seed=3)[0] == "ok"
    except httpx.HTTPError:
        return False


def measure(url: str, pid: int, requests: int, clients: int, long_steps: int, seed: int = 0) -> Report:
    """The whole measurement against a running app whose server process is ``pid``."""
    assert server_up(url), "the server does not edit before the load"  # also pays the lazy initialisation
    rss_idle = psutil.Process(pid).memory_info().rss
    uploads = mixed_uploads(requests, seed)
    with PeakRss(pid) as rss:
        start = time.monotonic()
        outcomes = run_load(url, uploads, clients)
        elapsed = time.monotonic() - start
        up = server_up(url)
        disconnect = disconnect_probe(url, long_steps) if long_steps else {}
    return Report(outcomes, elapsed, rss_idle / 2**20, rss.peak / 2**20, up, disconnect)


# -- the report ----------------------------------------------------------------------------------------------
def table(report: Report) -> str:
    """A markdown table: outcomes by kind of input, then latencies, memory, liveness and the disconnect."""
    kinds = sorted({o.upload.kind for o in report.outcomes}, key=lambda k: (k != "good", k))
    lines = [
        "| input | requests | result | refused with a message | busy (503) | wrong |",
        "|---|---|---|---|---|---|",
    ]
    for kind in [*kinds, "all"]:
        rows = [o for o in report.outcomes if kind in ("all", o.upload.kind)]
        counts = Counter(o.status for o in rows)
        label = f"**{kind}**" if kind == "all" else kind
        cells = [str(counts[s]) for s in ("ok", "refused", "busy", "wrong")]
        lines.append(f"| {label} | {len(rows)} | " + " | ".join(cells) + " |")
    answered = [o.seconds for o in report.outcomes if o.status != "busy"]
    q = statistics.quantiles(answered, n=20, method="inclusive") if len(answered) > 1 else answered * 19
    lines += [
        "",
        "| measure | value |",
        "|---|---|",
        f"| wall time | {report.elapsed_s:.1f} s |",
        f"| latency p50 / p95 / max (answered) | {q[9]:.2f} / {q[18]:.2f} / {max(answered):.2f} s |",
        f"| server RSS idle -> peak | {report.rss_idle_mb:.0f} -> {report.rss_peak_mb:.0f} MiB |",
        f"| server edits after the load | {'yes' if report.up_after else 'NO'} |",
    ]
    d = report.disconnect
    if d:
        lines += [
            f"| short edit / long edit, undisturbed | {d['short_edit_s']:.2f} / {d['long_edit_s']:.2f} s |",
            f"| next request served after a client left a long edit | {d['slot_free_after_s']:.2f} s |",
        ]
    for o in report.wrong[:10]:
        lines.append(f"\nWRONG: {o.upload.name} (expected {o.upload.expect}): {o.status} {o.message!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100, help="requests in all")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients")
    parser.add_argument(
        "--long-steps", type=int, default=100, help="steps of the edit a client walks away from"
    )
    parser.add_argument("--rss-limit-mb", type=float, default=300, help="largest peak RSS growth accepted")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mix of inputs")
    args = parser.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo, url = serve_tiny()
    try:
        report = measure(url, os.getpid(), args.requests, args.clients, args.long_steps, args.seed)
    finally:
        demo.close()
    print(
        f"{args.requests} requests from {args.clients} concurrent clients, tiny model at 32 px, {EDIT['steps']} steps"
    )
    print(table(report))
    growth = report.rss_peak_mb - report.rss_idle_mb
    return int(bool(report.wrong) or not report.up_after or growth > args.rss_limit_mb)


if __name__ == "__main__":
    sys.exit(main())
