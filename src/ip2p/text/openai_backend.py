"""The ``openai`` backend: any OpenAI-compatible chat-completions endpoint writes triplets (paper section 3.1.1).

The paper fine-tuned GPT-3 davinci; the completions endpoint it used is gone, so this backend prompts a chat model
few-shot instead: a system message states the format, then ``num_shots`` seed triplets as user/assistant turns
(caption -> ``instruction\\n%%\\nedited caption``), then the caption. Sampling settings are the paper's.

Plain standard library (``urllib``) with bounded concurrency (threads), a timeout per request, and retries with
exponential backoff (honouring ``Retry-After``) on 429, 5xx, timeouts and connection errors. Other 4xx answers (bad
key, unknown model) stop the run with :class:`~ip2p.text.backends.BackendError`; a caption whose retries run out
becomes an :class:`~ip2p.text.backends.ItemError` and stays undone for the next run.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ip2p.text.backends import BackendError, Completion, ItemError, SamplingConfig
from ip2p.text.format import DELIMITER_1, STOP, Triplet

SYSTEM_PROMPT = (
    "You write image-editing data. Given an image caption, reply with one edit instruction, then a line with "
    "exactly '%%', then the caption of the edited image. Keep the edited caption close to the original, "
    "changing only what the instruction changes. Reply with nothing else."
)
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass
class OpenAIConfig:
    """Where and how to call the endpoint. The key is read from the environment variable ``api_key_env``."""

    base_url: str = "https://api.openai.com/v1"  # POST {base_url}/chat/completions
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"  # unset or empty: no Authorization header (local servers)
    num_shots: int = 8  # seed triplets shown as examples
    max_concurrency: int = 8  # requests in flight
    timeout: float = 60.0  # seconds per request
    max_retries: int = 6  # on 429/5xx/timeouts, with exponential backoff
    backoff: float = 1.0  # first wait in seconds; doubles each retry, with jitter
    max_backoff: float = 60.0
    system_prompt: str = SYSTEM_PROMPT
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def validate(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base URL {self.base_url!r} must start with http:// or https://")
        if not self.model:
            raise ValueError("no model name for the openai backend; give --model")
        if self.max_concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.max_concurrency}")
        if self.timeout <= 0 or self.max_retries < 0 or self.num_shots < 0:
            raise ValueError("timeout must be > 0, retries and shots >= 0")
        self.sampling.validate()
        if self.sampling.caption_temperature not in (None, self.sampling.temperature):
            raise ValueError(
                "a caption temperature of its own needs the hf backend: a chat completion has one temperature"
            )


def few_shot_messages(system: str, shots: Sequence[Triplet], caption: str) -> list[dict[str, str]]:
    """Chat messages: the system prompt, each seed triplet as a user caption and an assistant completion (without
    the stop sequence, which the request's ``stop`` removes anyway), then the caption."""
    messages = [{"role": "system", "content": system}]
    for t in shots:
        messages.append({"role": "user", "content": t.input})
        messages.append({"role": "assistant", "content": t.edit + DELIMITER_1 + t.output})
    messages.append({"role": "user", "content": caption})
    return messages


def backoff_delay(attempt: int, base: float, cap: float, retry_after: str | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): the server's ``Retry-After`` when it gives seconds,
    else ``base * 2**attempt`` with +-25% jitter, capped."""
    if retry_after:
        try:
            return min(max(float(retry_after), 0.0), cap)
        except ValueError:
            pass
    return min(base * 2**attempt * random.uniform(0.75, 1.25), cap)


class OpenAIGenerator:
    """Completions from an OpenAI-compatible chat endpoint, few-shot from seed triplets.

    Example:
        >>> from ip2p.text.sources import read_seed_triplets
        >>> gen = OpenAIGenerator(OpenAIConfig(base_url="http://localhost:8000/v1", model="llama"),
        ...                       read_seed_triplets("toy"))  # doctest: +SKIP
        >>> gen.generate(["a red circle on a white background"], seeds=[0])  # doctest: +SKIP
    """

    name = "openai"

    def __init__(
        self,
        config: OpenAIConfig,
        seeds: Sequence[Triplet] = (),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        config.validate()
        self.config = config
        self.model = config.model
        self.shots = list(seeds)[: config.num_shots]  # fixed: the same examples for every caption
        self.sleep = sleep
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.api_key = os.environ.get(config.api_key_env, "")

    def settings(self) -> dict[str, Any]:
        c = self.config
        return {
            "backend": self.name,
            "model": c.model,
            "base_url": c.base_url,
            "sampling": c.sampling.to_dict(),
            "few_shot": {"num_shots": len(self.shots), "system_prompt": c.system_prompt},
            "max_concurrency": c.max_concurrency,
            "timeout": c.timeout,
            "max_retries": c.max_retries,
        }

    def generate(self, captions: Sequence[str], seeds: Sequence[int]) -> list[Completion]:
        if len(captions) != len(seeds):
            raise ValueError(f"{len(captions)} captions but {len(seeds)} seeds")
        workers = min(self.config.max_concurrency, max(len(captions), 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self._complete, captions, seeds))

    def request_body(self, caption: str, seed: int) -> dict[str, Any]:
        s = self.config.sampling
        return {
            "model": self.config.model,
            "messages": few_shot_messages(self.config.system_prompt, self.shots, caption),
            "temperature": s.temperature,
            "top_p": s.top_p,
            "frequency_penalty": s.frequency_penalty,
            "presence_penalty": s.presence_penalty,
            "max_tokens": s.max_new_tokens,
            "stop": [STOP],
            "seed": seed % 2**31,  # best effort on OpenAI's side; other servers may ignore it
        }

    def _complete(self, caption: str, seed: int) -> Completion:
        data = json.dumps(self.request_body(caption, seed)).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        c = self.config
        problem = "no attempt"
        for attempt in range(c.max_retries + 1):
            retry_after = None
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=c.timeout) as response:
                    body = json.loads(response.read().decode("utf-8"))
                return _content(body)
            except urllib.error.HTTPError as exc:
                detail = _error_detail(exc)
                if exc.code not in RETRY_STATUS:
                    hint = f" (is ${c.api_key_env} set?)" if exc.code in (401, 403) else ""
                    raise BackendError(f"{self.url}: HTTP {exc.code} {detail}{hint}") from exc
                problem, retry_after = f"HTTP {exc.code} {detail}", exc.headers.get("Retry-After")
            except TimeoutError as exc:
                problem = f"timed out after {c.timeout}s ({exc})"
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, TimeoutError):
                    problem = f"timed out after {c.timeout}s"
                else:
                    problem = f"cannot connect ({exc.reason})"
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                problem = f"malformed response ({exc})"
            except (OSError, http.client.HTTPException) as exc:
                problem = f"connection failed ({exc})"
            if attempt < c.max_retries:
                self.sleep(backoff_delay(attempt, c.backoff, c.max_backoff, retry_after))
        return ItemError(f"{problem}; gave up after {c.max_retries + 1} tries")


def _content(body: dict[str, Any]) -> str:
    content = body["choices"][0]["message"]["content"]
    if not isinstance(content, str):
        raise TypeError("message content is not text")
    return content


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read().decode("utf-8", "replace"))
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        return str(message or exc.reason)[:200]
    except Exception:
        return str(exc.reason)[:200]
