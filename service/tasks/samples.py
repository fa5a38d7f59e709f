"""POST /generate: samples of a generative model (vae through its decoder graph, dcgan), or a walk
through its latent space between the codes of two seeds (`interpolate`)."""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
from starlette.responses import Response

from core.card import ModelCard
from core.images import MAX_SEED, latent_noise

from .. import render
from ..errors import ClientError, int_field, shown
from ..schema import ANY_ARRAY, INT, obj
from .base import FORMAT, Options, Outputs, Task

INTERPOLATE_FIELDS = ("from_seed", "to_seed", "steps")
MIN_STEPS, DEFAULT_STEPS = 2, 8
SEED_FIELD = {**INT, "minimum": 0, "maximum": MAX_SEED}
INTERPOLATE = obj(
    {
        "from_seed": {**SEED_FIELD, "description": "the first image: the first sample of this seed"},
        "to_seed": {**SEED_FIELD, "description": "the last image: the first sample of this seed"},
        "steps": {
            **INT,
            "minimum": MIN_STEPS,
            "description": f"images in the row, both ends included (default {DEFAULT_STEPS}, at most the model's batch)",
        },
    },
    ("from_seed", "to_seed"),
    additionalProperties=False,
    description="instead of n and seed: a row of images along the great circle between the latent codes of two "
    "seeds (spherical interpolation: every code on the way is as likely under N(0, I) as the ends)",
)


def interpolation(fields: dict[str, Any], max_steps: int) -> dict[str, int] | None:
    """The `interpolate` option, checked: None when absent."""
    if "interpolate" not in fields:
        return None
    value = fields["interpolate"]
    usage = f'\'interpolate\' must be an object {{"from_seed": 0..{MAX_SEED}, "to_seed": 0..{MAX_SEED}, '
    usage += f'"steps": {MIN_STEPS}..{max_steps}}}'
    if not isinstance(value, dict):
        raise ClientError(400, "bad_field", f"{usage}, got {shown(value)}")
    unknown = sorted(str(k) for k in set(value) - set(INTERPOLATE_FIELDS))
    if unknown:
        names = ", ".join(shown(k, 32) for k in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ClientError(400, "unknown_field", f"unknown field(s) {names} in 'interpolate'; {usage}")
    missing = [k for k in ("from_seed", "to_seed") if k not in value]
    if missing:
        raise ClientError(400, "missing_field", f"'interpolate' lacks {', '.join(missing)}; {usage}")
    clashing = [k for k in ("n", "seed") if k in fields]
    if clashing:
        raise ClientError(
            400,
            "bad_field",
            f"'interpolate' sets the images itself: send it without {' and '.join(repr(k) for k in clashing)}",
        )
    named = {f"interpolate.{k}": v for k, v in value.items()}  # the messages name the field in full
    return {
        "from_seed": int_field(named, "interpolate.from_seed", 0, MAX_SEED, 0),
        "to_seed": int_field(named, "interpolate.to_seed", 0, MAX_SEED, 0),
        "steps": int_field(named, "interpolate.steps", MIN_STEPS, max_steps, min(DEFAULT_STEPS, max_steps)),
    }


def slerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """`steps` codes (steps, D) from a to b, both included, along the great circle between them
    (scaled from |a| to |b|): a straight line would pass near the origin, where a Gaussian latent
    code almost never lies, and the middle images would fade (White, "Sampling Generative
    Networks", 2016)."""
    t = np.linspace(0.0, 1.0, steps)[:, None]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)))
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if np.sin(omega) < 1e-6:  # (anti)parallel codes: the circle is not defined, a line is as good
        codes = (1 - t) * a64 + t * b64
    else:
        codes = (np.sin((1 - t) * omega) * a64 + np.sin(t * omega) * b64) / np.sin(omega)
    codes[0], codes[-1] = a64, b64  # the ends are the seeds' codes exactly, not up to rounding
    return codes.astype(np.float32)


class Samples(Task):
    """Samples of a generative model: the service draws n latent codes from a generator seeded with
    `seed` (core.images.latent_noise, as training does), so a seed always gives the same images."""

    name = "generate"
    accepted = ("model", "n", "seed", "format", "interpolate")
    takes_image = False
    example = '{"model": "dcgan", "n": 16, "seed": 0}'
    request_schema = {
        "n": {**INT, "minimum": 1, "description": "how many samples (default 1, at most the model's batch)"},
        "seed": {**SEED_FIELD, "description": "the same seed, the same images"},
        "format": FORMAT,
        "interpolate": INTERPOLATE,
    }
    answer_schema = {
        "seed": {**INT, "description": "the seed of the samples (with interpolate: its from_seed)"},
        "n": INT,
        "images": ANY_ARRAY,
        "interpolate": obj({k: INT for k in INTERPOLATE_FIELDS}, INTERPOLATE_FIELDS),
    }
    optional_answer = ("interpolate",)

    def options(self, card: ModelCard, fields: dict[str, Any]) -> Options:
        options = super().options(card, fields)
        options["interpolate"] = interpolation(fields, card.max_batch_size)
        if options["interpolate"]:
            options["n"], options["seed"] = options["interpolate"]["steps"], options["interpolate"]["from_seed"]
            return options
        options["n"] = int_field(fields, "n", 1, card.max_batch_size, 1)
        options["seed"] = int_field(fields, "seed", 0, MAX_SEED, secrets.randbelow(MAX_SEED + 1))  # returned, to replay
        return options

    def model_input(self, card: ModelCard, pixels: np.ndarray | None, options: Options) -> np.ndarray:
        walk = options["interpolate"]
        if walk:  # the first code of each seed: the first image of /generate with that seed
            dim = card.row_shape[0]
            start, end = (latent_noise(1, dim, walk[k])[0] for k in ("from_seed", "to_seed"))
            return slerp(start, end, walk["steps"])
        return latent_noise(options["n"], card.row_shape[0], options["seed"])

    def answer(
        self, card: ModelCard, outputs: Outputs, pixels: np.ndarray | None, options: Options
    ) -> dict[str, Any] | Response:
        images = np.clip(outputs["image"], 0, 1)  # (n, C, H, W)
        if options["fmt"] == "png":
            return Response(render.grid(images), media_type="image/png", headers={"X-Seed": str(options["seed"])})
        pictures = images[:, 0] if images.shape[1] == 1 else images
        answer = {
            "seed": options["seed"],
            "n": options["n"],
            "images": np.round(pictures.astype(np.float64), 4).tolist(),
        }
        if options["interpolate"]:
            answer["interpolate"] = options["interpolate"]
        return answer
