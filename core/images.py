"""Image preprocessing shared by training and serving, latent noise, and PNG encoding (numpy and
Pillow only).

Every image model of the course takes float32 pixels in [0, 1] with ink bright on a dark
background (as in MNIST). Normalisation (mean/std) is baked into the ONNX graph, so this module
only brings pixels to the declared size and range; training builds its tensors with the same
functions, so the served path cannot drift from what the model saw.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

# Uploads are checked against these from their header, before anything is decoded: a few KB of
# PNG can declare a 5000x5000 or a 1 x 10,000,000 canvas (a decompression bomb, or seconds of
# decoding for nothing). A 28x28 model needs nothing larger.
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # Pillow's own guard, for every other path

ACCEPTED_IMAGE_FORMATS = ("PNG", "JPEG")


class PreprocessError(ValueError):
    """The input cannot be turned into a model input; the message says what is accepted."""


class ImageTooLarge(PreprocessError):
    """The image's header declares more pixels than are accepted."""


def resize_unit_image(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D float image in [0, 1] to `size` (H, W) with bilinear filtering."""
    if pixels.shape == size:
        return pixels.astype(np.float32, copy=False)
    img = Image.fromarray(pixels.astype(np.float32), mode="F")
    out = img.resize((size[1], size[0]), resample=Image.Resampling.BILINEAR)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def decode_image(
    data: bytes, size: tuple[int, int], channels: int = 1, invert_light_background: bool = True
) -> np.ndarray:
    """Decode a PNG/JPEG upload into a (C, H, W) float32 array in [0, 1].

    Single-channel models take grayscale with ink bright (MNIST convention): photos and scans of
    digits are usually dark ink on light paper, so a mostly-light image is inverted. RGB models
    take the colours as they are.
    """
    if channels not in (1, 3):
        raise PreprocessError(f"image uploads are accepted for 1- or 3-channel models, not {channels}")
    try:
        img = Image.open(io.BytesIO(data))
        if img.format not in ACCEPTED_IMAGE_FORMATS:
            raise PreprocessError(f"image format {img.format!r} is not accepted; send PNG or JPEG")
        width, height = img.size  # from the header: nothing is decoded yet
        if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
            raise ImageTooLarge(
                f"image of {width}x{height} pixels; at most {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} are accepted"
            )
        if width < 1 or height < 1:
            raise PreprocessError("the image has no pixels")
        mode = "L" if channels == 1 else "RGB"
        img.draft(mode, (size[1] * 4, size[0] * 4))  # JPEG: decode at reduced size
        converted = img.convert(mode)
    except PreprocessError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"image too large: at most {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixels are accepted") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise PreprocessError("the upload is not a readable PNG or JPEG image") from exc
    if channels == 3:
        converted = converted.resize((size[1], size[0]), resample=Image.Resampling.BILINEAR)
        return np.asarray(converted, dtype=np.float32).transpose(2, 0, 1) / 255.0
    pixels = np.asarray(converted, dtype=np.float32) / 255.0
    if invert_light_background and float(pixels.mean()) > 0.5:
        pixels = 1.0 - pixels
    return resize_unit_image(pixels, size)[None]


MAX_SEED = 2**32 - 1


def png_bytes(image: np.ndarray, scale: int = 1) -> bytes:
    """A (C, H, W) image in [0, 1] (C = 1: grayscale, C = 3: RGB) as PNG, enlarged `scale` times
    with nearest-neighbour pixels. The one PNG encoder of the project."""
    u8 = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    img = Image.fromarray(u8[0], mode="L") if len(u8) == 1 else Image.fromarray(u8.transpose(1, 2, 0), mode="RGB")
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def latent_noise(n: int, dim: int, seed: int) -> np.ndarray:
    """The generators' input: n codes from N(0, I), a function of the seed alone. Training scores
    its samples with it and the service draws with it, so a seed means the same images in both."""
    return np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
