"""The openai backend against a local OpenAI-compatible server on loopback (no mocks of the client)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ip2p.text.backends import BackendError, ItemError, SamplingConfig
from ip2p.text.format import DELIMITER_1, STOP, Triplet
from ip2p.text.generate import GenerateConfig, generate_triplets
from ip2p.text.openai_backend import OpenAIConfig, OpenAIGenerator, backoff_delay, few_shot_messages


class FakeChatServer:
    """Answers POST /v1/chat/completions. ``script`` is a list of actions used one per request, then "ok":
    ("status", code[, retry_after]) | ("sleep", seconds) | "ok". Records requests and the peak concurrency."""

    def __init__(self):
        self.script = []
        self.requests = []
        self.headers = []
        self.lock = threading.Lock()
        self.in_flight = self.peak = 0
        self.delay = 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    action = server.script.pop(0) if server.script else "ok"
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                try:
                    time.sleep(server.delay)
                finally:
                    # out of flight before the response is sent: the client may start its next request as soon as
                    # it has read this one, so counting until after the write would see it one too many
                    with server.lock:
                        server.in_flight -= 1
                if action != "ok" and action[0] == "sleep":
                    time.sleep(action[1])  # longer than the client's timeout
                    return
                if action != "ok":
                    self.send_response(action[1])
                    if len(action) > 2:
                        self.send_header("Retry-After", str(action[2]))
                    payload = json.dumps({"error": {"message": f"scripted {action[1]}"}}).encode()
                else:
                    caption = body["messages"][-1]["content"]
                    text = f"make it blue{DELIMITER_1}{caption}, in blue"
                    payload = json.dumps(
                        {"choices": [{"message": {"role": "assistant", "content": text}}]}
                    ).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with FakeChatServer() as s:
        yield s


SEEDS = [Triplet("a cat", "make it a dog", "a dog"), Triplet("a red car", "make it blue", "a blue car")]


def make(server, sleeps=None, **kw):
    config = OpenAIConfig(base_url=server.url, model="local-model", api_key_env="IP2P_TEST_KEY", **kw)
    return OpenAIGenerator(config, SEEDS, sleep=(sleeps.append if sleeps is not None else lambda s: None))


def test_request_carries_the_papers_sampling_and_few_shot_prompt(server, monkeypatch):
    monkeypatch.setenv("IP2P_TEST_KEY", "sk-test")
    gen = make(server, num_shots=1)
    assert gen.generate(["a boat"], [7]) == [f"make it blue{DELIMITER_1}a boat, in blue"]
    body = server.requests[0]
    assert body["model"] == "local-model"
    assert (body["temperature"], body["top_p"], body["frequency_penalty"], body["presence_penalty"]) == (
        0.7,
        1.0,
        0.1,
        0.0,
    )
    assert body["max_tokens"] == 256 and body["stop"] == [STOP] and body["seed"] == 7
    assert body["messages"] == few_shot_messages(gen.config.system_prompt, SEEDS[:1], "a boat")
    assert body["messages"][1:3] == [
        {"role": "user", "content": "a cat"},
        {"role": "assistant", "content": "make it a dog\n%%\na dog"},
    ]
    assert server.headers[0]["Authorization"] == "Bearer sk-test"


def test_429_and_5xx_are_retried_with_backoff(server, monkeypatch):
    monkeypatch.delenv("IP2P_TEST_KEY", raising=False)
    server.script = [("status", 429, 3), ("status", 500), ("status", 503)]
    sleeps = []
    gen = make(server, sleeps, backoff=0.5)
    assert gen.generate(["a boat"], [0])[0].startswith("make it blue")
    assert len(server.requests) == 4
    assert sleeps[0] == 3.0  # Retry-After honoured
    assert 0.375 <= sleeps[1] / 2 <= 0.625 and 0.375 <= sleeps[2] / 4 <= 0.625  # 0.5 * 2**k, +-25% jitter
    assert "Authorization" not in server.headers[0]  # no key in the environment: none sent


def test_a_timeout_is_retried(server):
    server.script = [("sleep", 1.5)]
    gen = make(server, timeout=0.3)
    started = time.time()
    assert gen.generate(["a boat"], [0])[0].startswith("make it blue")
    assert len(server.requests) == 2 and time.time() - started < 1.5


def test_exhausted_retries_give_an_item_error_not_a_crash(server):
    server.script = [("status", 502)] * 3
    result = make(server, max_retries=2).generate(["a boat"], [0])
    assert (
        isinstance(result[0], ItemError) and "HTTP 502" in result[0].reason and "3 tries" in result[0].reason
    )


def test_a_bad_key_stops_the_run(server):
    server.script = [("status", 401)]
    with pytest.raises(BackendError, match=r"HTTP 401 scripted 401 \(is \$IP2P_TEST_KEY set\?\)"):
        make(server).generate(["a boat"], [0])
    assert len(server.requests) == 1


def test_unreachable_endpoint_is_an_item_error():
    config = OpenAIConfig(base_url="http://127.0.0.1:9/v1", model="m", max_retries=1, timeout=1)
    result = OpenAIGenerator(config, sleep=lambda s: None).generate(["a boat"], [0])
    assert isinstance(result[0], ItemError) and "cannot connect" in result[0].reason


def test_concurrency_is_bounded_and_order_kept(server):
    server.delay = 0.2  # long enough for requests to overlap on a loaded machine
    captions = [f"caption {i}" for i in range(12)]
    out = make(server, max_concurrency=3).generate(captions, list(range(12)))
    assert [o.split(DELIMITER_1)[1] for o in out] == [f"{c}, in blue" for c in captions]
    assert 1 < server.peak <= 3


def test_end_to_end_through_the_generation_loop(server, tmp_path):
    server.script = [("status", 429, 0)]
    config = GenerateConfig(output=str(tmp_path / "t.jsonl"), batch_size=4)
    report = generate_triplets([f"caption {i}" for i in range(6)], make(server), config, progress=False)
    assert report.kept == 6 and report.backend_errors == 0
    row = json.loads(open(config.output).readline())
    assert row["provenance"]["backend"] == "openai" and row["provenance"]["model"] == "local-model"
    assert row["provenance"]["sampling"] == SamplingConfig().to_dict()


def test_backoff_delay():
    assert backoff_delay(0, 1, 60, "2.5") == 2.5
    assert backoff_delay(0, 1, 60, "Wed, 21 Oct 2015 07:28:00 GMT") <= 1.25  # an HTTP date: fall back
    assert backoff_delay(10, 1, 60) == 60
