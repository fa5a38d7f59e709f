"""The service's settings: every EE559_* environment variable, read once, checked, frozen.

`SETTINGS` is built when service.service is imported (BentoML needs the worker count and batch
limits in the class decorators); nothing else in the service reads the environment. A value that
cannot be used stops `bentoml serve` with a message naming the variable and what it accepts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from core.card import PRECISIONS
from core.session import PROVIDERS

BATCHERS = ("ee559", "bentoml")
AUTH = ("auto", "token", "off")  # service/auth.py
LOG_FORMATS = ("text", "json")  # service/logs.py
IO_BINDING = ("auto", "on", "off")  # service/engine.py tensor_runner
# BentoML's traffic timeout of both services: a request with no answer started by then gets a 504.
REQUEST_TIMEOUT_S = 30


class SettingsError(ValueError):
    """An EE559_* variable holds a value the service cannot use."""


def _int(env: Mapping[str, str], name: str, default: int, lo: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw[:40]!r}: expected an integer >= {lo}") from None
    if value < lo:
        raise SettingsError(f"{name}={value}: expected an integer >= {lo}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw[:40]!r}: expected a number of seconds >= 0") from None
    if not value >= 0 or value == float("inf"):
        raise SettingsError(f"{name}={raw[:40]!r}: expected a number of seconds >= 0")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, accepted: tuple[str, ...]) -> str:
    value = env.get(name, default).strip().lower() or default
    if value not in accepted:
        raise SettingsError(f"{name}={value[:40]!r}; accepted: {', '.join(accepted)}")
    return value


def _precisions(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("EE559_PRECISION", "").strip().lower()
    chosen = tuple(p.strip() for p in raw.split(",") if p.strip()) or ("fp32",)
    if any(p not in PRECISIONS for p in chosen) or len(set(chosen)) != len(chosen):
        raise SettingsError(
            f"EE559_PRECISION={raw[:40]!r}; accepted: one or more of {', '.join(PRECISIONS)}, comma-separated, "
            "each once (the first is the default)"
        )
    return chosen


@dataclass(frozen=True)
class Settings:
    # EE559_MODELS: what to serve (default: the newest version of every stored model): names (the
    # newest version) or name:version, comma-separated; the first version listed of a name is the
    # one requests get when they name none (core/store.py select).
    models: tuple[str, ...] | None = None
    # EE559_PRECISION: which stored precision each name in EE559_MODELS (or every stored model)
    # stands for: fp32 (the exported graph, the default), fp16 or int8 (variants behind their gates,
    # export/variants.py), or several comma-separated, served side by side, the first the default;
    # a name without a variant of that precision serves its fp32 version (one log line). Versions
    # named in EE559_MODELS are served whatever their precision (core/store.py select).
    precision: tuple[str, ...] = ("fp32",)
    provider: str = "auto"  # EE559_PROVIDER: auto | cuda | cpu (core/session.py)
    batcher: str = "ee559"  # EE559_BATCHER: ee559 (in-process) | bentoml (a batching service via depends)
    # EE559_WORKERS: HTTP worker processes; default BentoML's "cpu_count", which reads the cgroup's
    # CPU limit (a pod limited to 2 CPUs on a 64-core node gets 2 workers, not 64).
    workers: int | str = "cpu_count"
    max_batch_size: int = 64  # EE559_MAX_BATCH_SIZE (also capped by each card's max_batch_size)
    # EE559_MAX_LATENCY_MS: generous on purpose: a request still queued after this long is answered
    # 503, and a tight value turns load into errors.
    max_latency_ms: int = 2000
    max_queue_rows: int = 512  # EE559_MAX_QUEUE: rows queued per worker and model; beyond: 503
    access_log: bool = False  # EE559_ACCESS_LOG=1: a line per request (service/logs.py; costs throughput)
    log_format: str = "text"  # EE559_LOG_FORMAT: text (BentoML's) | json (JSON lines with the request id)
    # EE559_DRAIN_SECONDS: after SIGTERM, readiness is 503 and the worker serves this long before
    # no longer answering new requests; BentoML's arbiter waits for its workers, so the bound is the
    # orchestrator's grace period: keep the drain and the longest request under it.
    drain_s: float = 2.0
    max_new_tokens: int = 512  # EE559_MAX_NEW_TOKENS: per /generate_text request
    # EE559_TTFT_BUDGET_S, EE559_GENERATION_BUDGET_S: a generation is admitted only if its first
    # token and its last are forecast within these (503 + Retry-After otherwise), and ends at the
    # second with the tokens it has. The total stays under REQUEST_TIMEOUT_S with room for a step.
    ttft_budget_s: float = 5.0
    generation_budget_s: float = 20.0
    max_prompt_chars: int = 2048  # EE559_MAX_PROMPT_CHARS
    max_body_bytes: int = 4 * 1024 * 1024  # EE559_MAX_BODY_BYTES
    # EE559_BODY_TIMEOUT_S: a client that stalls or trickles its body would hold a connection and
    # a coroutine: the whole body must arrive within this time.
    body_timeout_s: float = 10.0
    # EE559_DECODE_TIMEOUT_S: an uploaded image must be decoded within this time, waiting for a
    # decoding thread included (503 + Retry-After otherwise).
    decode_timeout_s: float = 5.0
    # EE559_AUTH: auto (a token where the server listens beyond loopback) | token | off (service/auth.py)
    auth: str = "auto"
    api_token: str = ""  # EE559_API_TOKEN: bearer token required on every route but the probes
    api_token_file: str = ""  # EE559_API_TOKEN_FILE: the generated token's file ($BENTOML_HOME/ee559_api_token)
    auth_probes: bool = False  # EE559_AUTH_PROBES=1: the probes and /metrics need the token too
    ort_threads: int = 1  # EE559_ORT_THREADS: intra-op threads per ONNX Runtime session
    # EE559_IO_BINDING: run tensor models through ONNX Runtime's IO binding (service/engine.py):
    # auto (on with CUDA, where it saves a device copy per output; off on the CPU, where plain
    # run() was 2-10% faster: LeNet batch 1 59 vs 62-71 us, ResNet batch 64 17.4 vs 17.9 ms, one
    # thread, 2026-11-26) | on | off.
    io_binding: str = "auto"
    # EE559_LANE=0: the inference routes go through BentoML's whole middleware stack (its request
    # metrics and OpenTelemetry spans) instead of the service's own layers alone (service/lane.py).
    lane: bool = True
    # EE559_REUSEPORT=0: the workers share BentoML's one listening socket (the busiest may take
    # every connection); 1: a SO_REUSEPORT socket per worker, connections spread by the kernel
    # (service/patches.py).
    reuseport: bool = True
    # EE559_RELOAD_S: every this many seconds each worker reads the store again and serves what
    # EE559_MODELS now selects (a new export, a version dropped); 0: only at start (service.py).
    reload_s: float = 0.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        models = tuple(n.strip() for n in env.get("EE559_MODELS", "").split(",") if n.strip()) or None
        workers_raw = env.get("EE559_WORKERS", "").strip()
        workers: int | str = "cpu_count" if workers_raw in ("", "cpu_count") else _int(env, "EE559_WORKERS", 1)
        return cls(
            models=models,
            precision=_precisions(env),
            provider=_choice(env, "EE559_PROVIDER", "auto", PROVIDERS),
            batcher=_choice(env, "EE559_BATCHER", "ee559", BATCHERS),
            workers=workers,
            max_batch_size=_int(env, "EE559_MAX_BATCH_SIZE", cls.max_batch_size),
            max_latency_ms=_int(env, "EE559_MAX_LATENCY_MS", cls.max_latency_ms),
            max_queue_rows=_int(env, "EE559_MAX_QUEUE", cls.max_queue_rows),
            access_log=env.get("EE559_ACCESS_LOG", "0") == "1",
            log_format=_choice(env, "EE559_LOG_FORMAT", "text", LOG_FORMATS),
            drain_s=_float(env, "EE559_DRAIN_SECONDS", cls.drain_s),
            max_new_tokens=_int(env, "EE559_MAX_NEW_TOKENS", cls.max_new_tokens),
            ttft_budget_s=_float(env, "EE559_TTFT_BUDGET_S", cls.ttft_budget_s),
            generation_budget_s=_float(env, "EE559_GENERATION_BUDGET_S", cls.generation_budget_s),
            max_prompt_chars=_int(env, "EE559_MAX_PROMPT_CHARS", cls.max_prompt_chars),
            max_body_bytes=_int(env, "EE559_MAX_BODY_BYTES", cls.max_body_bytes),
            body_timeout_s=_float(env, "EE559_BODY_TIMEOUT_S", cls.body_timeout_s),
            decode_timeout_s=_float(env, "EE559_DECODE_TIMEOUT_S", cls.decode_timeout_s),
            auth=_choice(env, "EE559_AUTH", "auto", AUTH),
            api_token=env.get("EE559_API_TOKEN", "").strip(),  # a Secret's file often ends in a newline
            api_token_file=env.get("EE559_API_TOKEN_FILE", "").strip(),
            auth_probes=env.get("EE559_AUTH_PROBES") == "1",
            ort_threads=_int(env, "EE559_ORT_THREADS", cls.ort_threads),
            io_binding=_choice(env, "EE559_IO_BINDING", "auto", IO_BINDING),
            lane=_choice(env, "EE559_LANE", "1", ("1", "0")) == "1",
            reuseport=_choice(env, "EE559_REUSEPORT", "1", ("1", "0")) == "1",
            reload_s=_float(env, "EE559_RELOAD_S", cls.reload_s),
        )

    def io_binding_for(self, provider: str) -> bool:
        """Whether sessions on `provider` (an ONNX Runtime provider name) run through IO binding."""
        return self.io_binding == "on" or (self.io_binding == "auto" and provider == "CUDAExecutionProvider")

    def __post_init__(self) -> None:
        if 0 < self.reload_s < 1:
            raise SettingsError(f"EE559_RELOAD_S={self.reload_s:g}: expected 0 (off) or at least 1 second")
        if self.api_token and (not self.api_token.isprintable() or " " in self.api_token):
            raise SettingsError("EE559_API_TOKEN holds whitespace or control characters: no client could send it")
        if self.auth == "off" and self.api_token:
            raise SettingsError("EE559_AUTH=off with EE559_API_TOKEN set: unset one of them")
        if not 0 < self.generation_budget_s <= REQUEST_TIMEOUT_S - 5:
            raise SettingsError(
                f"EE559_GENERATION_BUDGET_S={self.generation_budget_s:g}: expected more than 0 and at most "
                f"{REQUEST_TIMEOUT_S - 5} seconds (the server answers 504 after {REQUEST_TIMEOUT_S} s)"
            )
        if not 0 < self.ttft_budget_s <= self.generation_budget_s:
            raise SettingsError(
                f"EE559_TTFT_BUDGET_S={self.ttft_budget_s:g}: expected more than 0 and at most "
                f"EE559_GENERATION_BUDGET_S ({self.generation_budget_s:g})"
            )


SETTINGS = Settings.from_env()
