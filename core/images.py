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


def decode_image(data: bytes, size: tuple[int, int], channels: int = 1, as_digit: bool = True) -> np.ndarray:
    """Decode a PNG/JPEG upload into a (C, H, W) float32 array in [0, 1].

    Single-channel models take grayscale with ink bright (MNIST convention). Uploads are drawings,
    scans and photos of a digit: with `as_digit`, the picture is turned into bright ink on black
    whatever its polarity and contrast (ink_on_dark), and the digit is framed as MNIST's are
    (mnist_frame), wherever and however large it is on the canvas. RGB models take the colours as
    they are, resized.
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
    if not as_digit:
        return resize_unit_image(pixels, size)[None]
    if max(pixels.shape) > 4 * max(size):  # a large canvas: its strokes survive a box average
        shrink = 4 * max(size) / max(pixels.shape)
        small = (max(1, round(pixels.shape[1] * shrink)), max(1, round(pixels.shape[0] * shrink)))
        shrunk = Image.fromarray(pixels, mode="F").resize(small, resample=Image.Resampling.BOX)
        pixels = np.asarray(shrunk, dtype=np.float32)
    return frame_digit(pixels, size)[None]


def mnist_frame(pixels: np.ndarray, size: tuple[int, int] = (28, 28), box: int = 20) -> np.ndarray:
    """A digit of any size on a canvas of any size (2-D float, ink bright, in [0, 1]) framed as
    MNIST is: the ink's bounding box scaled to fit `box` x `box` (aspect kept), then placed so that
    its centre of mass is at the centre of `size`. Faint noise (below a tenth of the brightest
    ink) is not ink. A blank canvas stays blank."""
    pixels = np.asarray(pixels, dtype=np.float32)
    peak = float(pixels.max()) if pixels.size else 0.0
    out = np.zeros(size, dtype=np.float32)
    if peak <= 0.0:
        return out
    ink = pixels >= 0.1 * peak
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    crop = np.where(ink, pixels, 0.0)[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    scale = box / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    img = Image.fromarray(crop, mode="F")
    # Shrinking: an area average keeps thin strokes; enlarging: bilinear.
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    digit = np.clip(np.asarray(img.resize((nw, nh), resample=resample), dtype=np.float32), 0.0, 1.0)
    total = float(digit.sum())
    if total <= 0.0:
        return out
    cy = float((digit.sum(1) * np.arange(nh)).sum() / total)
    cx = float((digit.sum(0) * np.arange(nw)).sum() / total)
    # Placed with sub-pixel accuracy (bilinear): output pixel (x, y) samples the digit at
    # (x - left, y - top), which puts its centre of mass at the frame's centre.
    top, left = (size[0] - 1) / 2 - cy, (size[1] - 1) / 2 - cx
    placed = Image.fromarray(digit, mode="F").transform(
        (size[1], size[0]), Image.Transform.AFFINE, (1, 0, -left, 0, 1, -top), resample=Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(placed, dtype=np.float32), 0.0, 1.0)


def frame_digit(pixels: np.ndarray, size: tuple[int, int] = (28, 28)) -> np.ndarray:
    """A grayscale picture of one digit (2-D float in [0, 1], either polarity) as the digit models
    take it: ink_on_dark, then mnist_frame. Training frames its digits with this too."""
    return mnist_frame(ink_on_dark(pixels), size)


def ink_on_dark(pixels: np.ndarray) -> np.ndarray:
    """A grayscale picture of a drawing (2-D float in [0, 1]) as bright ink on black: the
    background is the border's median, whichever side it is (dark ink on paper, chalk on a board,
    a photo's uneven grey), and the ink's contrast is stretched to [0, 1] from there."""
    pixels = np.asarray(pixels, dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = float(np.median(border))
    signed = pixels - background
    # The ink is on the side of the background farther from it (light paper: darker strokes).
    lo, hi = float(np.percentile(signed, 0.1)), float(np.percentile(signed, 99.9))
    ink = -signed if abs(lo) > abs(hi) else signed
    strongest = float(np.percentile(ink, 99.9))
    if strongest <= 1e-3:  # a flat picture: nothing drawn
        return np.zeros_like(pixels)
    # Paper texture and sensor noise: up to a fifth of the ink's contrast counts as background.
    return np.clip((ink - 0.2 * strongest) / (0.8 * strongest), 0.0, 1.0)


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


def roughness(image: np.ndarray) -> float:
    """How much neighbouring pixels differ in one (C, H, W) image: the mean squared difference
    between horizontal and vertical neighbours, every channel. Photos, drawings and the scenes
    are smooth between their edges; noise is rough everywhere, a blank canvas not at all. The
    service and the calibration both call this."""
    x = np.asarray(image, dtype=np.float64)
    dh, dv = np.diff(x, axis=-1), np.diff(x, axis=-2)
    return float((np.square(dh).sum() + np.square(dv).sum()) / max(dh.size + dv.size, 1))


def latent_noise(n: int, dim: int, seed: int) -> np.ndarray:
    """The generators' input: n codes from N(0, I), a function of the seed alone. Training scores
    its samples with it and the service draws with it, so a seed means the same images in both."""
    return np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
