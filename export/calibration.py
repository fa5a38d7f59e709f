"""Say when a classifier does not know: temperature scaling and an out-of-distribution flag,
fitted at export on the model's validation split (the split training chose its epoch on; the test
split is only reported on), recorded in the model card (core/card.py Calibration).

- Temperature: one scalar T minimising the NLL of softmax(logits / T) on validation (Guo et al.,
  2017). The graph's logits stay as they are; the service divides by the card's T.
- Out-of-distribution rule: the logits' energy -T*logsumexp(logits/T) (Liu et al., 2020) or
  maximum softmax (Hendrycks & Gimpel, 2017), whichever separates validation from a generated
  out-of-distribution set better (AUROC), or the pixels' mean squared z-score against the
  training inputs (an input the model maps to ordinary logits, noise for the MLP, is still
  atypical there), or a roughness (core/images.py: how much neighbouring pixels differ) outside
  the range of validation's: noise on the scenes, whose textured backgrounds make every pixel
  vary, is typical pixel by pixel but far rougher than any scene, and a blank canvas smoother.
  The logits' threshold flags OOD_RATE / 2 of validation, the pixels' OOD_RATE / 4, and the
  roughness range OOD_RATE / 8 on each side.
- Reported on the test split and on a fresh draw of the generated sets (another seed): expected
  calibration error (ECE_BINS equal-width bins, top-1) before and after, the share of real test
  inputs wrongly flagged and the share of each generated set flagged, each with its sample size.

The generated sets are deterministic for a seed and need no download: uniform and Gaussian noise,
blank canvases of one colour, and inputs of the wrong kind for the model's input: letters and
shapes framed as uploaded digits are (core/images.py frame_digit) for one-channel models, digits
drawn in colour for RGB models. Which set a model gets follows its input shape, not its name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from core.card import OOD_SCORES, Calibration
from core.images import frame_digit, roughness
from core.session import make_session
from training.train import canvas_uploads

ECE_BINS = 15
# Share of validation inputs the rule flags: 1/2 the logits' score, 1/4 the pixels', 1/8 each roughness bound.
OOD_RATE = 0.05
PIXEL_SCALE_FLOOR = 0.05  # a pixel that never changes (the MNIST frame's margin) still has a scale
OOD_EXAMPLES = 200  # per generated set
T_BOUNDS = (0.05, 20.0)
# Letters that do not look like a digit (no O, I, l, S, Z, B, G, g, q, b, ...).
LETTERS = "ACEFHKMNPRTUVWXYacefhkmnprtuvwxy"

Logits = Callable[[np.ndarray], np.ndarray]  # inputs (N, ...) -> logits (N, K)


# -- calibration ---------------------------------------------------------------------------------
def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the targets under softmax(logits / temperature)."""
    return float(-log_softmax(logits, temperature)[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = T_BOUNDS) -> float:
    """The T in `bounds` minimising nll(logits, y, T). The NLL is convex in 1/T, so unimodal in
    log T: a golden-section search finds its minimum. A validation split the model gets entirely
    right with a margin pushes T to the lower bound (ever sharper is ever better)."""
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(logits, y, math.exp(a)), nll(logits, y, math.exp(b))
    while hi - lo > 1e-6:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(logits, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(logits, y, math.exp(b))
    return math.exp((lo + hi) / 2)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-1 ECE: the confidence-weighted gap |accuracy - confidence| over `bins` equal-width bins
    of the top probability, each weighted by its share of the inputs."""
    conf, pred = probs.max(axis=-1), probs.argmax(axis=-1)
    right = (pred == y).astype(np.float64)
    which = np.minimum((conf * bins).astype(int), bins - 1)  # confidence 1.0 goes to the last bin
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(right[inside].mean() - conf[inside].mean())
    return float(total)


# -- out-of-distribution ---------------------------------------------------------------------------
def scores(logits: np.ndarray, rule: Calibration) -> np.ndarray:
    """rule.score of each row: the very function the service applies to an answer."""
    return np.array([rule.score(row) for row in logits.tolist()])


def auroc(inside: np.ndarray, outside: np.ndarray, flag: str) -> float:
    """How often an outside input scores on the flagged side of an inside one (ties count half)."""
    if flag == "below":
        inside, outside = -inside, -outside
    both = np.concatenate([inside, outside])
    ranks = np.empty(len(both))
    order = np.argsort(both, kind="mergesort")
    ranks[order] = np.arange(1, len(both) + 1)
    for v in np.unique(both):  # average ranks of ties
        same = both == v
        if same.sum() > 1:
            ranks[same] = ranks[same].mean()
    n_in, n_out = len(inside), len(outside)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def fit_threshold(inside: np.ndarray, flag: str, rate: float = OOD_RATE) -> float:
    """The threshold that flags about `rate` of the in-distribution scores `inside`."""
    q = 1 - rate if flag == "above" else rate
    return float(np.quantile(inside, q, method="linear"))


def pixel_scores(x: np.ndarray, rule: Calibration) -> np.ndarray:
    """rule.pixel_score of each input, as the service computes it."""
    return np.array([rule.pixel_score(row) for row in x.reshape(len(x), -1).tolist()])


def roughnesses(x: np.ndarray) -> np.ndarray:
    """core.images.roughness of each input (N, C, H, W), as the service computes it."""
    return np.array([roughness(row) for row in x])


def flagged_share(logit_scores: np.ndarray, pix_scores: np.ndarray, rough: np.ndarray, rule: Calibration) -> float:
    return float(
        np.mean([rule.flags(float(s), float(p), float(r)) for s, p, r in zip(logit_scores, pix_scores, rough)])
    )


# -- generated out-of-distribution inputs --------------------------------------------------------
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _glyph(text: str, rng: np.random.Generator, canvas: int = 64) -> np.ndarray:
    """One character drawn white on black at a random size, stroke and slant, in [0, 1]."""
    img = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(img)
    size = int(rng.integers(28, 48))
    draw.text(
        (canvas / 2, canvas / 2),
        text,
        fill=255,
        font=_font(size),
        anchor="mm",
        stroke_width=int(rng.integers(0, 3)),
        stroke_fill=255,
    )
    img = img.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255


def _shape(rng: np.random.Generator, canvas: int = 64) -> np.ndarray:
    """A filled disk, square or triangle, a grid of bars or a checkerboard: nothing digit-like (no
    ring, which reads as a 0, and no single bar, a 1)."""
    img = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(img)
    kind = int(rng.integers(0, 5))
    c, r = canvas / 2 + rng.uniform(-6, 6, 2), rng.uniform(12, 26)
    if kind == 0:
        draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=255)
    elif kind == 1:
        draw.rectangle([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=255)
    elif kind == 2:
        draw.polygon([(c[0], c[1] - r), (c[0] - r, c[1] + r), (c[0] + r, c[1] + r)], fill=255)
    elif kind == 3:
        step = int(rng.integers(6, 12))
        for x in range(4, canvas - 4, step):
            draw.rectangle([x, 4, x + step // 2, canvas - 4], fill=255)
    else:
        step = int(rng.integers(6, 14))
        for y in range(0, canvas, step):
            for x in range(0, canvas, step):
                if (x // step + y // step) % 2:
                    draw.rectangle([x, y, x + step - 1, y + step - 1], fill=255)
    return np.asarray(img.rotate(float(rng.uniform(0, 90))), dtype=np.float32) / 255


def ood_inputs(row_shape: tuple[int, ...], seed: int, n: int = OOD_EXAMPLES) -> dict[str, np.ndarray]:
    """Generated inputs no classifier of ours was trained on, by set, each (n, *row_shape) float32
    in [0, 1]: noise_uniform, noise_gaussian, blank, and letters and shapes (one channel, framed
    as uploaded digits are) or digits_rgb (three channels). Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    channels, h, w = row_shape
    shape = (n, *row_shape)
    sets = {
        "noise_uniform": rng.uniform(0, 1, shape),
        "noise_gaussian": np.clip(rng.normal(0.5, 0.25, shape), 0, 1),
        # One colour per canvas (grey levels for one channel), black and white included.
        "blank": np.broadcast_to(
            np.concatenate([np.zeros((1, channels)), np.ones((1, channels)), rng.uniform(0, 1, (n - 2, channels))])[
                :, :, None, None
            ],
            shape,
        ),
    }
    if channels == 1:
        sets["letters"] = np.stack([frame_digit(_glyph(str(rng.choice(list(LETTERS))), rng), (h, w)) for _ in range(n)])
        sets["shapes"] = np.stack([frame_digit(_shape(rng), (h, w)) for _ in range(n)])
        sets["letters"], sets["shapes"] = sets["letters"][:, None], sets["shapes"][:, None]
    else:
        digits = []
        for _ in range(n):
            ink = np.asarray(
                Image.fromarray(_glyph(str(rng.integers(0, 10)), rng)).resize((w, h), Image.Resampling.BILINEAR)
            )
            paper, colour = rng.uniform(0, 0.5, (channels, 1, 1)), rng.uniform(0.5, 1, (channels, 1, 1))
            digits.append(paper + (colour - paper) * ink[None])
        sets["digits_rgb"] = np.stack(digits)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sets.items()}


# What each generated set counts towards in the summary figures.
GROUPS = {
    "noise": ("noise_uniform", "noise_gaussian"),
    "blank": ("blank",),
    "non_digits": ("letters", "shapes"),
    "digits": ("digits_rgb",),
}


def graph_logits(onnx_path: Any, input_name: str, batch: int) -> Logits:
    """The exported graph's logits (what the service serves), on the CPU, `batch` rows at a time."""
    session, _, _ = make_session(onnx_path, "cpu")

    def run(x: np.ndarray) -> np.ndarray:
        parts = [
            session.run(["logits"], {input_name: np.ascontiguousarray(x[i : i + batch], dtype=np.float32)})[0]
            for i in range(0, len(x), batch)
        ]
        return np.concatenate(parts).astype(np.float64)

    return run


# -- the whole fit ---------------------------------------------------------------------------------
def calibrate(
    logits_of: Logits,
    train_x: np.ndarray,
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    row_shape: tuple[int, ...],
    seed: int,
) -> Calibration:
    """Fit T and the out-of-distribution rule on validation (the pixels' mean and scale on the
    training inputs; for the choice of score, a generated draw of seed + 1); measure on test and
    a fresh generated draw (seed)."""
    (vx, vy), (tx, ty) = val, test
    v_logits, t_logits = logits_of(vx), logits_of(tx)
    t = fit_temperature(v_logits, vy)
    fit_sets = np.concatenate(list(ood_inputs(row_shape, seed + 1).values()))
    fit_ood = logits_of(fit_sets)
    separation = {}
    for name, flag in OOD_SCORES.items():
        probe = Calibration(t, name, 0.0)
        separation[name] = auroc(scores(v_logits, probe), scores(fit_ood, probe), flag)
    best = max(OOD_SCORES, key=lambda s: (separation[s], s == "energy"))  # a tie goes to energy
    flat = train_x.reshape(len(train_x), -1).astype(np.float64)
    pixels = Calibration(
        t, best, 0.0, tuple(flat.mean(0).tolist()), tuple(np.maximum(flat.std(0), PIXEL_SCALE_FLOOR).tolist())
    )
    v_pixels, v_rough = pixel_scores(vx, pixels), roughnesses(vx)
    # Digits also arrive as pictures, which framing resamples into smoother strokes: the roughness
    # range covers validation both ways (as the JSON frame and as a large dark-on-light upload).
    fit_rough = np.concatenate([v_rough, roughnesses(canvas_uploads(vx))]) if row_shape[0] == 1 else v_rough
    rule = Calibration(
        t,
        best,
        fit_threshold(scores(v_logits, pixels), OOD_SCORES[best], OOD_RATE / 2),
        pixels.pixel_mean,
        pixels.pixel_scale,
        fit_threshold(v_pixels, "above", OOD_RATE / 4),
        roughness_range=(
            fit_threshold(fit_rough, "below", OOD_RATE / 8),
            fit_threshold(fit_rough, "above", OOD_RATE / 8),
        ),
    )
    fit_pixels = pixel_scores(fit_sets, rule)

    def share(x: np.ndarray, logits: np.ndarray) -> float:
        return round(flagged_share(scores(logits, rule), pixel_scores(x, rule), roughnesses(x), rule), 4)

    generated = ood_inputs(row_shape, seed)
    sets = {k: (x, logits_of(x)) for k, x in generated.items()}
    flagged = {k: {"share": share(x, lg), "examples": len(x)} for k, (x, lg) in sets.items()}
    ood: dict[str, Any] = {
        "fitted_on": "validation",
        "fit_examples": len(vy),
        "target_rate": OOD_RATE,
        "chosen_by": f"AUROC, validation vs generated sets (seed {seed + 1}), higher wins",
        "auroc": {
            **{k: round(v, 4) for k, v in separation.items()},
            "pixels": round(auroc(v_pixels, fit_pixels, "above"), 4),
        },
        "pixels_fitted_on": f"training inputs (n={len(train_x)}), threshold on validation",
        "roughness_fitted_on": "validation" + (", as JSON frames and as uploads" if row_shape[0] == 1 else ""),
        "flagged_validation": round(flagged_share(scores(v_logits, rule), v_pixels, v_rough, rule), 4),
        "flagged_in_distribution": share(tx, t_logits),
        "in_distribution_examples": len(ty),
        "generated_seed": seed,
        "flagged": flagged,
    }
    if row_shape[0] == 1:  # the test digits as a person's upload: how many the rule wrongly flags then
        uploads = canvas_uploads(tx)
        ood["flagged_test_uploads"] = share(uploads, logits_of(uploads))
    for group, members in GROUPS.items():
        present = [m for m in members if m in sets]
        if present:
            x = np.concatenate([sets[m][0] for m in present])
            ood[f"flagged_{group}"] = share(x, np.concatenate([sets[m][1] for m in present]))
            ood[f"{group}_examples"] = len(x)

    def ece(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
        return round(expected_calibration_error(np.exp(log_softmax(logits, temperature)), y), 5)

    report = {
        "method": "temperature scaling",
        "fitted_on": "validation",
        "ece_bins": ECE_BINS,
        "ece_before": ece(t_logits, ty, 1.0),
        "ece_after": ece(t_logits, ty, t),
        "ece_examples": len(ty),
        "validation": {
            "examples": len(vy),
            "ece_before": ece(v_logits, vy, 1.0),
            "ece_after": ece(v_logits, vy, t),
            "nll_before": round(nll(v_logits, vy), 5),
            "nll_after": round(nll(v_logits, vy, t), 5),
        },
        "nll_before": round(nll(t_logits, ty), 5),
        "nll_after": round(nll(t_logits, ty, t), 5),
        "ood": ood,
    }
    return replace(rule, report=report)


def summary(name: str, cal: Calibration) -> str:
    """One line of the figures, as export prints them."""
    r, ood = cal.report, cal.report["ood"]
    groups = "; ".join(
        f"{g.replace('_', '-')} flagged {ood[f'flagged_{g}']:.1%} (n={ood[f'{g}_examples']})"
        for g in GROUPS
        if f"flagged_{g}" in ood
    )
    return (
        f"{name}: temperature {cal.temperature:.3f} (validation, n={r['validation']['examples']}); "
        f"test ECE {r['ece_before']:.4f} -> {r['ece_after']:.4f} (n={r['ece_examples']}, {r['ece_bins']} bins); "
        f"OOD: {cal.ood_score} (AUROC {ood['auroc'][cal.ood_score]:.3f}) or pixels (AUROC {ood['auroc']['pixels']:.3f})"
        + (
            f" or roughness outside [{cal.roughness_range[0]:.4f}, {cal.roughness_range[1]:.4f}]"
            if cal.roughness_range
            else ""
        )
        + ": "
        f"real test inputs flagged {ood['flagged_in_distribution']:.1%} (n={ood['in_distribution_examples']}"
        + (f"; as uploads {ood['flagged_test_uploads']:.1%}" if "flagged_test_uploads" in ood else "")
        + "); "
        f"{groups}"
    )
