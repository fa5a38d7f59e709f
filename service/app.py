"""The HTTP routes of the front service, mounted into BentoML as a Starlette app so that bodies are
read raw (size limits, content types and error messages are ours):

- one POST route per serving task (service/tasks/);
- the Open Inference Protocol (KServe v2 / Triton HTTP) with the binary tensor data extension (v2.py);
- GET /models and /models/{name}: the served model cards, for clients and load generators, and
  /models/{name}/loss_curve.png, the training curve carried beside the graph;
- GET /docs.json, the OpenAPI document of all of them (openapi.py).

A ClientError raised anywhere in a route is answered here, by one handler (answers.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core import store

from .answers import client_error_handler, json_response
from .errors import ClientError
from .openapi import document
from .tasks import TASKS, Task
from .v2 import V2_ROUTES


def task_route(task: Task) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await task.handle(bentoml.get_current_service(), request)

    endpoint.__name__ = task.name
    return endpoint


async def models(request: Request) -> Response:
    """GET /models: every served version's public card, without its examples; `default` marks the
    version a request gets when it names none."""
    catalog = bentoml.get_current_service().catalog
    return json_response(
        {
            "models": [
                {**card.public(), "default": catalog.default[card.name] is card} for card in catalog.cards.values()
            ]
        }
    )


async def model_card(request: Request) -> Response:
    """GET /models/{name}[?version=v]: one served graph's public card, with a few held-out examples."""
    svc = bentoml.get_current_service()
    card = svc.catalog.graph(request.path_params["name"], request.query_params.get("version"))
    return json_response(card.public(with_examples=True))


async def loss_curve(request: Request) -> Response:
    """GET /models/{name}/loss_curve.png[?version=v]: the training run's loss per epoch, drawn by
    training and carried by the export into the model store beside the graph."""
    svc = bentoml.get_current_service()
    card = svc.catalog.graph(request.path_params["name"], request.query_params.get("version"))
    data = await anyio.to_thread.run_sync(store.read_artifact, card, "loss_curve")  # file reads off the loop
    if data is None:
        raise ClientError(
            404,
            "no_loss_curve",
            f"model {card.name!r} version {card.version} carries no loss curve (exported before the export "
            f"carried training curves, or its run drew none); re-export it: python -m export {card.family}",
        )
    return Response(data, media_type="image/png")


async def openapi_document(request: Request) -> Response:
    """GET /docs.json: BentoML's document (probes, metrics) with our routes (service/openapi.py).
    Our mounted routes are matched before BentoML's own /docs.json."""
    svc = bentoml.get_current_service()
    return json_response(document(svc.bentoml_openapi(), svc.catalog, svc.settings))


http_app = Starlette(
    routes=[
        Route("/docs.json", openapi_document, methods=["GET"]),
        Route("/models", models, methods=["GET"]),
        Route("/models/{name}", model_card, methods=["GET"]),
        Route("/models/{name}/loss_curve.png", loss_curve, methods=["GET"]),
        *(Route(f"/{name}", task_route(task), methods=["POST"]) for name, task in TASKS.items()),
        *V2_ROUTES,
    ],
    exception_handlers={ClientError: client_error_handler},
)
