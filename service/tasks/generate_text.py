"""POST /generate_text: the continuation of a prompt by a character-level language model (char_lstm,
gpt), whole as JSON or streamed as server-sent events, one per character, then an `event: done`
with the same summary as the JSON answer. Its fields, options and route are here; the service's
scheduler (service/scheduler.py) batches the steps of concurrent generations."""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from core.card import ModelCard
from core.images import MAX_SEED

from ..answers import envelope, json_response
from ..errors import ClientError, check_fields, int_field, shown
from ..inputs import json_fields
from ..observe import note_model
from ..scheduler import TextRequest, TextScheduler
from ..schema import BOOL, INT, NUM, STR
from .base import Server, Task


async def _disconnected(request: Request) -> None:
    """Returns when the client closes its connection (the body has been read: the next message
    the server gives is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class GenerateText(Task):
    """Text continuation by a character-level language model (streamed on request)."""

    name = "generate_text"
    accepted = ("model", "prompt", "max_new_tokens", "temperature", "top_k", "seed", "stream")
    required = ("prompt",)
    takes_image = False
    example = '{"model": "gpt", "prompt": "Return the", "stream": true}'
    request_schema = {
        "prompt": {**STR, "minLength": 1, "description": "the text to continue (characters the model knows)"},
        "max_new_tokens": {**INT, "minimum": 1, "description": "default 128 (at most EE559_MAX_NEW_TOKENS)"},
        "temperature": {**NUM, "minimum": 0, "exclusiveMinimum": True, "maximum": 10, "description": "default 1"},
        "top_k": {**INT, "minimum": 1, "description": "sample among the k likeliest (1: greedy)"},
        "seed": {**INT, "minimum": 0, "maximum": MAX_SEED},
        "stream": {**BOOL, "description": "server-sent events, one per character"},
    }
    answer_schema = {
        "prompt": STR,
        "text": STR,
        "tokens": INT,
        "finish_reason": {
            **STR,
            "enum": ["length", "time_limit"],
            "description": "length: max_new_tokens reached; time_limit: EE559_GENERATION_BUDGET_S reached first",
        },
        "seed": INT,
        "temperature": NUM,
        "top_k": INT,
        "time_to_first_token_s": NUM,
        "seconds": NUM,
    }

    def text_options(
        self, card: ModelCard, fields: dict[str, Any], max_new_tokens: int, max_prompt_chars: int
    ) -> dict[str, Any]:
        """Validated request fields; every message says what is accepted."""
        check_fields(fields, self.accepted, image=False)
        prompt = fields.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ClientError(400, "bad_field", "'prompt' must be a non-empty string (the text to continue)")
        if len(prompt) > max_prompt_chars:
            raise ClientError(
                400,
                "bad_field",
                f"'prompt' has {len(prompt)} characters; at most {max_prompt_chars} "
                "are accepted (EE559_MAX_PROMPT_CHARS)",
            )
        vocab = card.labels
        unknown = sorted(set(prompt) - set(vocab))
        if unknown:
            listed = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in unknown[:5])
            raise ClientError(
                400,
                "unknown_characters",
                f"'prompt' holds characters the model never saw: {listed}"
                f"{' ...' if len(unknown) > 5 else ''}; it knows these "
                f"{len(vocab)}: {''.join(vocab)!r}",
            )
        temperature = fields.get("temperature", 1.0)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature)
            or not 0 < temperature <= 10
        ):
            raise ClientError(
                400,
                "bad_field",
                f"'temperature' must be a number in (0, 10], got {shown(temperature)}"
                "; for greedy decoding send top_k 1",
            )
        stream = fields.get("stream", False)
        if not isinstance(stream, bool):
            raise ClientError(400, "bad_field", f"'stream' must be true or false, got {shown(stream)}")
        return {
            "prompt": prompt,
            "max_new": int_field(fields, "max_new_tokens", 1, max_new_tokens, min(128, max_new_tokens)),
            "temperature": float(temperature),
            "top_k": int_field(fields, "top_k", 1, len(vocab), len(vocab)),
            "seed": int_field(fields, "seed", 0, MAX_SEED, secrets.randbelow(MAX_SEED + 1)),
            "stream": stream,
        }

    async def handle(self, server: Server, request: Request) -> Response:
        settings = server.settings
        fields = await json_fields(request, settings, self.name, self.example)
        card = server.catalog.for_task(
            fields.get("model"), self.name, fields.pop("version", None), fields.pop("precision", None)
        )
        opts = self.text_options(card, fields, settings.max_new_tokens, settings.max_prompt_chars)
        scheduler = server.text[card.tag]
        note_model(card.name)
        gen = scheduler.submit(
            scheduler.model.encode(opts["prompt"]), opts["max_new"], opts["temperature"], opts["top_k"], opts["seed"]
        )
        if opts["stream"]:
            tokens = scheduler.tokens(gen)
            try:  # the status line waits for the first token: a request shed before it gets a 503
                first = await anext(tokens)
            except StopAsyncIteration:
                first = None
            except ClientError:
                raise
            except Exception:  # logged by the scheduler
                return json_response({"error": "generation failed; retry"}, 500)
            return StreamingResponse(
                self._events(card, scheduler, gen, opts, first, tokens),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        text: list[str] = []

        async def collect() -> None:
            async for t in scheduler.tokens(gen):
                text.append(scheduler.model.vocab[t])

        collecting, gone = asyncio.ensure_future(collect()), asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait((collecting, gone), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server's timeout or shutdown: generate for nobody no more
            collecting.cancel()
            scheduler.cancel(gen)
            raise
        finally:
            gone.cancel()
        if not collecting.done():  # the client went away: stop generating for nobody
            collecting.cancel()
            scheduler.cancel(gen)
            return json_response({"error": "the client closed the connection"}, 499)
        failure = collecting.exception()
        if isinstance(failure, ClientError):  # shed: it could not start within its budget
            raise failure
        if failure is not None:  # logged by the scheduler
            return json_response({"error": "generation failed; retry"}, 500)
        return json_response(self._summary(card, scheduler, gen, opts, text))

    @staticmethod
    def _summary(
        card: ModelCard, scheduler: TextScheduler, gen: TextRequest, opts: dict[str, Any], text: list[str]
    ) -> dict[str, Any]:
        body = {
            "prompt": opts["prompt"],
            "text": "".join(text),
            "tokens": gen.produced,
            "seed": opts["seed"],
            "temperature": opts["temperature"],
            "top_k": opts["top_k"],
            "finish_reason": gen.finish_reason,
            "time_to_first_token_s": round(gen.first_token_s or 0.0, 6),
            "seconds": round(gen.last - gen.arrived, 6),
        }
        return envelope(card, scheduler.provider, body)

    async def _events(
        self,
        card: ModelCard,
        scheduler: TextScheduler,
        gen: TextRequest,
        opts: dict[str, Any],
        first: int | None,
        tokens: AsyncIterator[int],
    ) -> AsyncIterator[bytes]:
        text: list[str] = []

        async def every() -> AsyncIterator[int]:
            if first is not None:
                yield first
                async for token in tokens:
                    yield token

        try:
            async for token in every():
                text.append(scheduler.model.vocab[token])
                yield b"data: " + orjson.dumps({"token": text[-1]}) + b"\n\n"
            yield b"event: done\ndata: " + orjson.dumps(self._summary(card, scheduler, gen, opts, text)) + b"\n\n"
        except Exception:
            yield b'event: error\ndata: {"error": "generation failed; retry"}\n\n'
        finally:
            scheduler.cancel(gen)  # a client that went away stops its generation
