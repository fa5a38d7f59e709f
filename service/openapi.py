"""The service's OpenAPI document (GET /docs.json, rendered by /docs): BentoML's own (probes,
metrics) merged with every route of ours, which BentoML cannot see inside a mounted Starlette app.
Built per request from the tasks (their request fields and answers), the served model cards
(model names per route) and the settings (limits), so it describes what this server really serves."""

from __future__ import annotations

from typing import Any

from core.card import PRECISIONS

from .catalog import Catalog
from .inputs import IMAGE_TYPES, JSON, MULTIPART, NPY, RAW
from .schema import ANY_ARRAY, BINARY, INT, STR, arr, obj
from .settings import Settings
from .tasks import TASKS, Task
from .tasks.base import IMAGE_FIELD

ERROR = obj({"error": STR}, ("error",))
ERRORS = {
    "400": "the request is malformed or a field is out of range (the message says what is accepted)",
    "401": "missing or wrong bearer token (only when EE559_API_TOKEN is set)",
    "404": "no such model (or version, or precision, or file of it)",
    "408": "the body did not arrive within EE559_BODY_TIMEOUT_S",
    "413": "the body is over EE559_MAX_BODY_BYTES",
    "415": "content type or content encoding not accepted",
    "503": "at capacity or past the queue deadline: retry after Retry-After seconds",
}


def _errors(*codes: str) -> dict[str, Any]:
    errors: dict[str, Any] = {
        code: {"description": ERRORS[code], "content": {JSON: {"schema": ERROR}}} for code in codes
    }
    if "404" in errors:  # a path parameter no route can hold (a newline) gets BentoML's plain 404
        errors["404"]["content"]["text/plain"] = {"schema": STR}
    return errors


def _answer(task: Task) -> dict[str, Any]:
    content = {
        JSON: {
            "schema": obj(
                {"model": STR, "version": STR, "provider": STR, **task.answer_schema},
                ("model", "version", "provider", *(k for k in task.answer_schema if k not in task.optional_answer)),
            )
        }
    }
    if task.renders_png:
        content["image/png"] = {"schema": BINARY}
    return {"200": {"description": task.summary, "content": content}}


def _model_field(models: list[str]) -> dict[str, Any]:
    return {"type": "string", "enum": models, "description": "a served model (or the graph's own name)"}


VERSION_FIELD = {
    "type": "string",
    "description": "a served version of the model (GET /models); default: the first listed in EE559_MODELS, "
    "else the newest stored",
}
PRECISION_FIELD = {
    "type": "string",
    "enum": list(PRECISIONS),
    "description": "the first served version of the model in this precision (GET /models: each version's "
    "`precision`; EE559_PRECISION chooses which are served); default: the default version",
}


def _image_operation(task: Task, models: list[str]) -> dict[str, Any]:
    fields = {
        "model": _model_field(models),
        "version": VERSION_FIELD,
        "precision": PRECISION_FIELD,
        **task.request_schema,
    }
    binary = {"schema": BINARY}
    return {
        "summary": task.summary,
        "operationId": task.name,
        "tags": ["tasks"],
        "parameters": [
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": schema,
                "description": "with a binary body (image, .npy, raw float32)",
            }
            for name, schema in fields.items()
        ],
        "requestBody": {
            "required": True,
            "content": {
                JSON: {"schema": obj({**fields, "image": IMAGE_FIELD}, ("model", "image"), additionalProperties=False)},
                MULTIPART: {"schema": obj({**fields, "image": BINARY}, ("model", "image"))},
                **{t: binary for t in (*IMAGE_TYPES, NPY, RAW)},
            },
        },
        "responses": {**_answer(task), **_errors("400", "401", "404", "408", "413", "415", "503")},
    }


def _json_operation(
    task: Task,
    models: list[str],
    extra_200: dict[str, Any] | None = None,
    limits: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    answer = _answer(task)
    request = {k: {**v, **(limits or {}).get(k, {})} for k, v in task.request_schema.items()}
    answer["200"]["content"].update(extra_200 or {})
    return {
        "summary": task.summary,
        "operationId": task.name,
        "tags": ["tasks"],
        "requestBody": {
            "required": True,
            "content": {
                JSON: {
                    "schema": obj(
                        {
                            "model": _model_field(models),
                            "version": VERSION_FIELD,
                            "precision": PRECISION_FIELD,
                            **request,
                        },
                        ("model", *task.required),
                        additionalProperties=False,
                    )
                }
            },
        },
        "responses": {**answer, **_errors("400", "401", "404", "408", "413", "415", "503")},
    }


V2_TENSOR = obj(
    {"name": STR, "shape": arr(INT), "datatype": STR, "data": ANY_ARRAY, "parameters": {"type": "object"}},
    ("name", "shape", "datatype"),
)
V2_REQUEST = obj(
    {
        "id": STR,
        "inputs": arr(V2_TENSOR),
        "parameters": {"type": "object"},
        "outputs": arr(obj({"name": STR, "parameters": {"type": "object"}}, ("name",))),
    },
    ("inputs",),
)
V2_RESPONSE = obj(
    {"model_name": STR, "model_version": STR, "id": STR, "parameters": {"type": "object"}, "outputs": arr(V2_TENSOR)},
    ("model_name", "outputs"),
)
V2_METADATA = obj(
    {"name": STR, "versions": arr(STR), "platform": STR, "inputs": arr(V2_TENSOR), "outputs": arr(V2_TENSOR)},
    ("name", "platform", "inputs", "outputs"),
)


def _v2_paths(models: list[str]) -> dict[str, Any]:
    model: dict[str, Any] = {
        "name": "model",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": models},
    }
    version: dict[str, Any] = {"name": "version", "in": "path", "required": True, "schema": STR}
    status = {"200": {"description": "yes"}, "503": {"description": "no"}}
    paths: dict[str, Any] = {
        "/v2": {
            "get": {
                "summary": "Server metadata (Open Inference Protocol)",
                "operationId": "v2_server",
                "tags": ["v2"],
                "responses": {
                    "200": {
                        "description": "name, version, extensions",
                        "content": {
                            JSON: {
                                "schema": obj(
                                    {"name": STR, "version": STR, "extensions": arr(STR)},
                                    ("name", "version", "extensions"),
                                )
                            }
                        },
                    }
                },
            }
        },
        "/v2/health/live": {
            "get": {
                "summary": "Liveness",
                "operationId": "v2_live",
                "tags": ["v2"],
                "responses": {"200": {"description": "live"}},
            }
        },
        "/v2/health/ready": {
            "get": {"summary": "Readiness", "operationId": "v2_ready", "tags": ["v2"], "responses": status}
        },
    }
    for prefix, params, tag in (
        ("/v2/models/{model}", [model], ""),
        ("/v2/models/{model}/versions/{version}", [model, version], "_version"),
    ):
        paths[prefix] = {
            "get": {
                "summary": "Model metadata",
                "operationId": f"v2_metadata{tag}",
                "tags": ["v2"],
                "parameters": params,
                "responses": {
                    "200": {"description": "inputs and outputs", "content": {JSON: {"schema": V2_METADATA}}},
                    **_errors("400", "401", "404"),
                },
            }
        }
        paths[f"{prefix}/ready"] = {
            "get": {
                "summary": "Model readiness",
                "operationId": f"v2_model_ready{tag}",
                "tags": ["v2"],
                "parameters": params,
                "responses": {**status, **_errors("400", "401", "404")},
            }
        }
        paths[f"{prefix}/infer"] = {
            "post": {
                "summary": "Inference (JSON, or the binary tensor data extension)",
                "operationId": f"v2_infer{tag}",
                "tags": ["v2"],
                "parameters": params,
                "requestBody": {"required": True, "content": {JSON: {"schema": V2_REQUEST}, RAW: {"schema": BINARY}}},
                "responses": {
                    "200": {
                        "description": "outputs",
                        "content": {JSON: {"schema": V2_RESPONSE}, RAW: {"schema": BINARY}},
                    },
                    **_errors("400", "401", "404", "408", "413", "415", "503"),
                },
            }
        }
    return paths


MODEL_CARDS = {
    "/models": {
        "get": {
            "summary": "The served models' cards (without examples)",
            "operationId": "models",
            "tags": ["models"],
            "responses": {
                "200": {
                    "description": "cards",
                    "content": {JSON: {"schema": obj({"models": arr({"type": "object"})}, ("models",))}},
                }
            },
        }
    },
    "/models/{name}": {
        "get": {
            "summary": "One served model's card, with a few held-out examples",
            "operationId": "model_card",
            "tags": ["models"],
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": STR}],
            "responses": {
                "200": {
                    "description": "the card",
                    "content": {
                        JSON: {
                            "schema": obj(
                                {"name": STR, "version": STR, "tasks": arr(STR)}, ("name", "version", "tasks")
                            )
                        }
                    },
                },
                **_errors("401", "404"),
            },
        }
    },
    "/models/{name}/loss_curve.png": {
        "get": {
            "summary": "The loss per epoch of the training run a served graph was exported from (a PNG)",
            "operationId": "loss_curve",
            "tags": ["models"],
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": STR},
                {"name": "version", "in": "query", "required": False, "schema": VERSION_FIELD},
            ],
            "responses": {
                "200": {"description": "the curve", "content": {"image/png": {"schema": BINARY}}},
                **_errors("400", "401", "404"),
            },
        }
    },
}


def document(bentoml_doc: dict[str, Any], catalog: Catalog, settings: Settings) -> dict[str, Any]:
    """BentoML's document with our routes added, for the served cards and the configured limits."""
    paths: dict[str, Any] = {}
    for name, task in TASKS.items():
        served = catalog.names_for(name)
        if not served:
            continue
        if name == "generate_text":
            stream = {"text/event-stream": {"schema": obj({"event": STR, "data": STR}, ("data",))}}
            limits = {
                "max_new_tokens": {"maximum": settings.max_new_tokens},
                "prompt": {"maxLength": settings.max_prompt_chars},
            }
            paths["/generate_text"] = {"post": _json_operation(task, served, stream, limits)}
        elif task.takes_image:
            paths[f"/{name}"] = {"post": _image_operation(task, served)}
        else:
            paths[f"/{name}"] = {"post": _json_operation(task, served)}
    paths.update(MODEL_CARDS)
    all_models = sorted(catalog.default)
    doc = dict(bentoml_doc)
    doc["paths"] = {**bentoml_doc.get("paths", {}), **paths, **(_v2_paths(all_models) if all_models else {})}
    doc["tags"] = [
        *bentoml_doc.get("tags", []),
        {"name": "tasks", "description": "one route per serving task"},
        {"name": "models", "description": "the served model cards"},
        {"name": "v2", "description": "Open Inference Protocol (KServe v2, Triton HTTP)"},
    ]
    return doc
