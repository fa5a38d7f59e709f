"""The HTTP routes of the front service, mounted into BentoML as a Starlette app so that bodies are
read raw (size limits, content types and error messages are ours):

- task endpoints, one per serving task: POST /classify, ...
- the Open Inference Protocol (KServe v2 / Triton HTTP), with the binary tensor data extension;
- GET /docs.json, the OpenAPI document of all of them (service/openapi.py).
"""

from __future__ import annotations

from typing import Any

import bentoml
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from . import generate
from .errors import ClientError
from .io import JSON, max_body_bytes, media_type, parse_json_object, read_body, read_image_request
from .responses import error_response, json_response
from .tasks import TASKS
from .v2 import V2_ROUTES


def task_endpoint(task_name: str):
    task = TASKS[task_name]

    async def endpoint(request: Request) -> Response:
        svc = bentoml.get_current_service()
        try:
            chosen: list[dict[str, Any]] = []

            def shape_of(fields: dict[str, Any]) -> tuple[int, ...]:
                card = svc.card_for(fields.get("model"), task_name)
                chosen.append(card)
                return tuple(card["inputs"][0]["shape"][1:])

            req = await read_image_request(request, shape_of)
            card = chosen[0]
            options = task.options(card, req.fields)
            outputs, provider = await svc.run(card["name"], req.pixels[None])
            result = task.respond(card, [o[0] for o in outputs], req.pixels, provider, **options)
            return result if isinstance(result, Response) else json_response(result)
        except ClientError as exc:
            return error_response(exc)

    return endpoint


async def json_fields(request: Request, route: str, example: str) -> dict[str, Any]:
    """The JSON object of a route that takes no image; 415 for any other body, naming an example."""
    if media_type(request) != JSON:
        raise ClientError(415, "unsupported_media_type", f"/{route} takes a JSON object such as {example}")
    return parse_json_object(await read_body(request, max_body_bytes()))


def generate_endpoint(task_name: str):
    """Tasks without an image: the JSON fields say what to make, the task draws the model input."""
    task = TASKS[task_name]

    async def endpoint(request: Request) -> Response:
        svc = bentoml.get_current_service()
        try:
            fields = await json_fields(request, task_name, '{"model": "dcgan", "n": 16, "seed": 0}')
            card = svc.card_for(fields.get("model"), task_name)
            options = task.options(card, fields)
            outputs, provider = await svc.run(card["name"], task.noise(card, **options))
            result = task.respond(card, outputs, provider, **options)
            return result if isinstance(result, Response) else json_response(result)
        except ClientError as exc:
            return error_response(exc)

    return endpoint


async def generate_text(request: Request) -> Response:
    """POST /generate_text: the continuation of a prompt, whole (JSON) or streamed as server-sent
    events, one per character, then an `event: done` with the same summary as the JSON answer."""
    from .service import MAX_NEW_TOKENS, MAX_PROMPT_CHARS

    svc = bentoml.get_current_service()
    try:
        fields = await json_fields(request, "generate_text", '{"model": "gpt", "prompt": "Return the", "stream": true}')
        card = svc.card_for(fields.get("model"), "generate_text")
        opts = generate.options(card, fields, MAX_NEW_TOKENS, MAX_PROMPT_CHARS)
        engine = svc.text[card["name"]]
        gen = engine.submit(engine.model.encode(opts["prompt"]), opts["max_new"], opts["temperature"], opts["top_k"],
                            opts["seed"])
    except ClientError as exc:
        return error_response(exc)

    def summary(text: list[str]) -> dict[str, Any]:
        return {"model": card["name"], "version": card["version"], "prompt": opts["prompt"], "text": "".join(text),
                "tokens": gen.produced, "seed": opts["seed"], "temperature": opts["temperature"],
                "top_k": opts["top_k"], "time_to_first_token_s": round(gen.first_token_s or 0.0, 6),
                "seconds": round(gen.last - gen.arrived, 6), "provider": engine.provider}

    if opts["stream"]:
        async def events():
            text: list[str] = []
            try:
                async for token in engine.tokens(gen):
                    text.append(engine.model.vocab[token])
                    yield b"data: " + orjson.dumps({"token": text[-1]}) + b"\n\n"
                yield b"event: done\ndata: " + orjson.dumps(summary(text)) + b"\n\n"
            except Exception:  # noqa: BLE001 - the status line is gone: say it in the stream
                yield b'event: error\ndata: {"error": "generation failed; retry"}\n\n'
            finally:
                engine.cancel(gen)  # a client that went away stops its generation

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        text = [engine.model.vocab[t] async for t in engine.tokens(gen)]
    except Exception:  # noqa: BLE001 - logged by the scheduler
        return json_response({"error": "generation failed; retry"}, 500)
    return json_response(summary(text))


async def openapi_document(request: Request) -> Response:
    """GET /docs.json: BentoML's document (probes, metrics) with our routes (service/openapi.py).
    Our mounted routes are matched before BentoML's own /docs.json."""
    from .openapi import document
    from .service import MAX_NEW_TOKENS, MAX_PROMPT_CHARS

    svc = bentoml.get_current_service()
    return json_response(document(svc.bentoml_openapi(), svc.cards, MAX_NEW_TOKENS, MAX_PROMPT_CHARS))


http_app = Starlette(routes=[
    Route("/docs.json", openapi_document, methods=["GET"]),
    Route("/generate_text", generate_text, methods=["POST"]),
    *(Route(f"/{name}", (task_endpoint if getattr(task, "takes_image", True) else generate_endpoint)(name),
            methods=["POST"]) for name, task in TASKS.items() if getattr(task, "route", True)),
    *V2_ROUTES,
])
