"""The HTTP routes of the front service, mounted into BentoML as a Starlette app so that bodies are
read raw (size limits, content types and error messages are ours):

- task endpoints, one per serving task: POST /classify, ...
- the Open Inference Protocol (KServe v2 / Triton HTTP), with the binary tensor data extension.
"""

from __future__ import annotations

from typing import Any

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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


def generate_endpoint(task_name: str):
    """Tasks without an image: the JSON fields say what to make, the task draws the model input."""
    task = TASKS[task_name]

    async def endpoint(request: Request) -> Response:
        svc = bentoml.get_current_service()
        try:
            if media_type(request) != JSON:
                raise ClientError(415, "unsupported_media_type", f"/{task_name} takes a JSON object such as "
                                                                 '{"model": "dcgan", "n": 16, "seed": 0}')
            fields = parse_json_object(await read_body(request, max_body_bytes()))
            card = svc.card_for(fields.get("model"), task_name)
            options = task.options(card, fields)
            outputs, provider = await svc.run(card["name"], task.noise(card, **options))
            result = task.respond(card, outputs, provider, **options)
            return result if isinstance(result, Response) else json_response(result)
        except ClientError as exc:
            return error_response(exc)

    return endpoint


http_app = Starlette(routes=[
    *(Route(f"/{name}", (task_endpoint if getattr(task, "takes_image", True) else generate_endpoint)(name),
            methods=["POST"]) for name, task in TASKS.items()),
    *V2_ROUTES,
])
