"""Serving tasks, keyed by the `task` a model card declares. A task turns the model's raw output
into the HTTP answer; adding a model of an existing task needs no change here."""

from __future__ import annotations

import io
import secrets
from typing import Any

import numpy as np
from PIL import Image
from starlette.responses import Response

from .errors import ClientError
from .preprocess import MAX_SEED, latent_noise
from .schema import ANY_ARRAY, BOOL, INT, NUM, STR, arr, obj


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _output(card: dict[str, Any], outputs: list[np.ndarray], name: str) -> np.ndarray:
    return outputs[[o["name"] for o in card["outputs"]].index(name)]


def check_fields(fields: dict[str, Any], accepted: tuple[str, ...], image: bool = True) -> None:
    unknown = sorted(set(fields) - set(accepted))
    if unknown:
        raise ClientError(400, "unknown_field", f"unknown field(s) {', '.join(map(repr, unknown))[:200]}; accepted: "
                                                f"{', '.join((*(('image',) if image else ()), *accepted))}")


def int_field(fields: dict[str, Any], name: str, lo: int, hi: int, default: int) -> int:
    """An integer option from lo to hi; form and query fields arrive as strings of digits."""
    value = fields.get(name, default)
    if isinstance(value, str) and value.strip().isdigit() and len(value) < 24:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ClientError(400, "bad_field", f"'{name}' must be an integer from {lo} to {hi}, got {str(value)[:40]!r}")
    return value


FORMATS = ("json", "png")
FORMAT = {"type": "string", "enum": list(FORMATS), "description": "json (default) or png (a rendered picture)"}


def format_option(fields: dict[str, Any], accepted: tuple[str, ...]) -> dict[str, Any]:
    """For tasks that answer JSON or a rendered PNG (field 'format')."""
    check_fields(fields, accepted)
    fmt = fields.get("format", "json")
    if fmt not in FORMATS:
        raise ClientError(400, "bad_field", f"'format' must be one of {', '.join(FORMATS)}, got {str(fmt)[:40]!r}")
    return {"fmt": fmt}


class Classify:
    """Image classification: label, probabilities and top-k."""

    name = "classify"
    fields = ("model", "top_k")
    request = {"top_k": {**INT, "minimum": 1, "description": "how many of the best classes to list (default 3)"}}
    answer = {"label": STR, "class_index": INT, "probabilities": arr(NUM),
              "top_k": arr(obj({"label": STR, "class_index": INT, "probability": NUM},
                               ("label", "class_index", "probability")))}

    @staticmethod
    def options(card: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        check_fields(fields, Classify.fields)
        n = len(card["labels"])
        return {"top_k": int_field(fields, "top_k", 1, n, min(3, n))}

    @staticmethod
    def respond(card: dict[str, Any], outputs: list[np.ndarray], pixels: np.ndarray, provider: str,
                top_k: int) -> dict[str, Any]:
        probs = _softmax(outputs[0].astype(np.float64))
        order = np.argsort(-probs)[:top_k]
        labels = card["labels"]
        best = int(order[0])
        return {
            "model": card["name"],
            "version": card["version"],
            "label": labels[best],
            "class_index": best,
            "probabilities": [round(float(p), 6) for p in probs],
            "top_k": [{"label": labels[i], "class_index": int(i), "probability": round(float(probs[i]), 6)}
                      for i in order],
            "provider": provider,
        }


def heat_colours(heat: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) in [0, 1], black -> red -> yellow -> white."""
    return np.stack([np.clip(3 * heat, 0, 1), np.clip(3 * heat - 1, 0, 1), np.clip(3 * heat - 2, 0, 1)], axis=-1)


class ImageAnswer:
    """Tasks that answer JSON or a picture (field 'format')."""

    fields = ("model", "format")
    request = {"format": FORMAT}

    @classmethod
    def options(cls, card: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        return format_option(fields, cls.fields)


class Explain(ImageAnswer):
    """Class activation map of the predicted class: where in the image the evidence was."""

    name = "explain"
    answer = {"label": STR, "class_index": INT, "probability": NUM, "heatmap": arr(arr(NUM))}

    @staticmethod
    def respond(card: dict[str, Any], outputs: list[np.ndarray], pixels: np.ndarray, provider: str,
                fmt: str) -> dict[str, Any] | Response:
        logits, cam = _output(card, outputs, "logits"), _output(card, outputs, "cam")
        probs = _softmax(logits.astype(np.float64))
        best = int(probs.argmax())
        if fmt == "png":  # the heat map over the input, side by side with it
            image = as_rgb(pixels)
            return Response(side_by_side_png(image, 0.5 * image + 0.5 * heat_colours(cam)), media_type="image/png",
                            headers={"X-Label": card["labels"][best], "X-Probability": f"{probs[best]:.6f}"})
        return {
            "model": card["name"],
            "version": card["version"],
            "label": card["labels"][best],
            "class_index": best,
            "probability": round(float(probs[best]), 6),
            "heatmap": np.round(cam.astype(np.float64), 4).tolist(),  # (H, W) in [0, 1], aligned with the input
            "provider": provider,
        }


# One colour per class for rendered masks: background black, then distinct hues.
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], dtype=np.float32) / 255


def side_by_side_png(left: np.ndarray, right: np.ndarray, scale: int = 4) -> bytes:
    """Two (H, W, 3) images in [0, 1] as one PNG, enlarged `scale` times."""
    both = np.concatenate([left, right], axis=1)
    buf = io.BytesIO()
    Image.fromarray((both * 255).round().astype(np.uint8), mode="RGB").resize(
        (both.shape[1] * scale, both.shape[0] * scale), Image.Resampling.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """(C, H, W) model input -> (H, W, 3) for display."""
    return pixels.transpose(1, 2, 0) if len(pixels) == 3 else np.repeat(pixels[0][..., None], 3, axis=-1)


class Segment(ImageAnswer):
    """Semantic segmentation: a class per pixel."""

    name = "segment"
    answer = {"classes": arr(STR), "mask": arr(arr(INT)), "pixel_counts": {"type": "object", "additionalProperties": INT}}

    @staticmethod
    def respond(card: dict[str, Any], outputs: list[np.ndarray], pixels: np.ndarray, provider: str,
                fmt: str) -> dict[str, Any] | Response:
        mask = outputs[0].argmax(axis=0)  # (classes, H, W) logits -> (H, W) class indices
        if fmt == "png":  # the input and its mask, side by side
            return Response(side_by_side_png(as_rgb(pixels), PALETTE[mask % len(PALETTE)]), media_type="image/png")
        counts = np.bincount(mask.ravel(), minlength=len(card["labels"]))
        return {
            "model": card["name"],
            "version": card["version"],
            "classes": card["labels"],
            "mask": mask.tolist(),  # (H, W) indices into "classes"
            "pixel_counts": {label: int(n) for label, n in zip(card["labels"], counts)},
            "provider": provider,
        }


class Denoise(ImageAnswer):
    """The image with its noise removed (same shape as the input)."""

    name = "denoise"
    answer = {"denoised": ANY_ARRAY}

    @staticmethod
    def respond(card: dict[str, Any], outputs: list[np.ndarray], pixels: np.ndarray, provider: str,
                fmt: str) -> dict[str, Any] | Response:
        return image_answer(card, pixels, _output(card, outputs, "denoised"), "denoised", provider, fmt)


def image_answer(card: dict[str, Any], pixels: np.ndarray, image: np.ndarray, key: str, provider: str, fmt: str,
                 **extra: Any) -> dict[str, Any] | Response:
    """An image-to-image answer: input and output side by side as a PNG, or the output as an
    (H, W) (one channel) or (C, H, W) array in [0, 1]."""
    image = np.clip(image, 0, 1)  # (C, H, W)
    if fmt == "png":
        return Response(side_by_side_png(as_rgb(pixels), as_rgb(image)), media_type="image/png")
    image = image[0] if len(image) == 1 else image
    return {"model": card["name"], "version": card["version"], key: np.round(image.astype(np.float64), 4).tolist(),
            **extra, "provider": provider}


class Reconstruct(ImageAnswer):
    """A VAE's reconstruction of the image (decoded from the posterior mean), with the posterior."""

    name = "reconstruct"
    answer = {"reconstruction": ANY_ARRAY, "mean": arr(NUM), "logvar": arr(NUM)}

    @staticmethod
    def respond(card: dict[str, Any], outputs: list[np.ndarray], pixels: np.ndarray, provider: str,
                fmt: str) -> dict[str, Any] | Response:
        latent = {k: _output(card, outputs, k).astype(np.float64).round(6).tolist() for k in ("mean", "logvar")}
        return image_answer(card, pixels, _output(card, outputs, "reconstruction"), "reconstruction", provider, fmt,
                            **latent)


class Embed:
    """The model's embedding of the image (its bottleneck), for search and clustering."""

    name = "embed"
    fields = ("model",)
    request: dict[str, Any] = {}
    answer = {"embedding": arr(NUM), "dim": INT}

    @staticmethod
    def options(card: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        check_fields(fields, Embed.fields)
        return {}

    @staticmethod
    def respond(card: dict[str, Any], outputs: list[np.ndarray], pixels: np.ndarray, provider: str) -> dict[str, Any]:
        z = _output(card, outputs, "embedding").astype(np.float64)
        return {"model": card["name"], "version": card["version"], "embedding": z.round(6).tolist(), "dim": len(z),
                "provider": provider}


def grid_png(images: np.ndarray, scale: int = 2, pad: int = 2) -> bytes:
    """(N, C, H, W) images in [0, 1] as one PNG grid, ceil(sqrt(N)) columns, on a grey background."""
    n, _, h, w = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 0.5, dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = as_rgb(img)
    buf = io.BytesIO()
    Image.fromarray((np.clip(grid, 0, 1) * 255).round().astype(np.uint8), mode="RGB").resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


class Generate:
    """Samples of a generative model: the service draws n latent codes from a generator seeded with
    `seed` (preprocess.latent_noise), so a seed always gives the same images; no image comes in."""

    name = "generate"
    fields = ("model", "n", "seed", "format")
    takes_image = False
    request = {"n": {**INT, "minimum": 1, "description": "how many samples (default 1, at most the model's batch)"},
               "seed": {**INT, "minimum": 0, "maximum": MAX_SEED, "description": "the same seed, the same images"},
               "format": FORMAT}
    required: tuple[str, ...] = ()
    answer = {"seed": INT, "n": INT, "images": ANY_ARRAY}

    @staticmethod
    def options(card: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        check_fields(fields, Generate.fields, image=False)
        n = int_field(fields, "n", 1, card["max_batch_size"], 1)
        seed = int_field(fields, "seed", 0, MAX_SEED, secrets.randbelow(MAX_SEED + 1))  # returned, to replay
        return {"n": n, "seed": seed, **format_option({"format": fields.get("format", "json")}, ("format",))}

    @staticmethod
    def noise(card: dict[str, Any], n: int, seed: int, **_: Any) -> np.ndarray:
        return latent_noise(n, card["inputs"][0]["shape"][1], seed)

    @staticmethod
    def respond(card: dict[str, Any], outputs: list[np.ndarray], provider: str, n: int, seed: int,
                fmt: str) -> dict[str, Any] | Response:
        images = np.clip(outputs[0], 0, 1)  # (n, C, H, W)
        if fmt == "png":
            return Response(grid_png(images), media_type="image/png", headers={"X-Seed": str(seed)})
        shown = images[:, 0] if images.shape[1] == 1 else images
        return {"model": card.get("family", card["name"]), "version": card["version"], "seed": seed, "n": n,
                "images": np.round(shown.astype(np.float64), 4).tolist(), "provider": provider}


class GenerateText:
    """Text continuation by a character-level language model (route in api.py: it streams)."""

    name = "generate_text"
    route = False  # not a row-per-request task: service/generate.py schedules it
    fields = ("model", "prompt", "max_new_tokens", "temperature", "top_k", "seed", "stream")
    request = {"prompt": {**STR, "minLength": 1, "description": "the text to continue (characters the model knows)"},
               "max_new_tokens": {**INT, "minimum": 1, "description": "default 128 (at most EE559_MAX_NEW_TOKENS)"},
               "temperature": {**NUM, "minimum": 0, "exclusiveMinimum": True, "maximum": 10, "description": "default 1"},
               "top_k": {**INT, "minimum": 1, "description": "sample among the k likeliest (1: greedy)"},
               "seed": {**INT, "minimum": 0, "maximum": MAX_SEED},
               "stream": {**BOOL, "description": "server-sent events, one per character"}}
    required = ("prompt",)
    answer = {"prompt": STR, "text": STR, "tokens": INT, "seed": INT, "temperature": NUM, "top_k": INT,
              "time_to_first_token_s": NUM, "seconds": NUM}


TASKS = {t.name: t for t in (Classify, Explain, Segment, Denoise, Embed, Reconstruct, Generate, GenerateText)}
