"""The model card: the contract between the exporter and everything that serves or calls a model.

Written once by `python -m export` beside each ONNX graph (model_card.json), read by the service,
the benchmarks and the load generator. Like Triton's config.pbtxt it is a typed schema, not a dict
read by key: `ModelCard.from_json(data)` checks the fields every reader relies on and
`to_json()` writes them back. Standard library only, so a load-generating machine can read cards
with neither torch, BentoML nor ONNX Runtime installed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

CARD_FILE = "model_card.json"
# The precisions a stored graph may have (ModelCard.precision): fp32 is what export writes; fp16
# (for CUDA) and int8 (static quantisation, for CPUs) are variants behind their own gates.
PRECISIONS = ("fp32", "fp16", "int8")


class CardError(ValueError):
    """A model card lacks a field its readers need, or holds one of the wrong kind."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. `shape` entries that are strings are named dynamic axes
    ("batch_size", "sequence_length"); in an export spec they may also name config fields,
    which `core.spec.ExportSpec.resolve` replaces by the checkpoint's numbers."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    @classmethod
    def from_json(cls, data: Any) -> TensorSpec:
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("name"), str)
            or not isinstance(data.get("shape"), list)
        ):
            raise CardError(f"a tensor needs 'name' and 'shape', got {str(data)[:80]}")
        return cls(data["name"], tuple(data["shape"]), data.get("dtype", "float32"))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class Generation:
    """How a text step graph carries its state from one step to the next (core/textgen.py).

    cache "recurrent" (the LSTM): fixed-size state tensors, concatenated along `batch_axis`.
    cache "kv" (the GPT): key/value caches growing along `length_axis`, with the inputs named by
    `positions` and `past_mask`, and a window of `context` tokens. In an export spec, string values
    of `context` name config fields (resolved per checkpoint)."""

    cache: str
    state: dict[str, str]  # state input -> the output that holds its next value
    batch_axis: int
    length_axis: int | None = None
    context: int | str | None = None
    positions: str | None = None
    past_mask: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> Generation:
        if not isinstance(data, dict) or data.get("cache") not in ("recurrent", "kv"):
            raise CardError(f"'generation' needs a 'cache' of recurrent or kv, got {str(data)[:80]}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# Out-of-distribution scores of a classifier's logits z at temperature T, and on which side of the
# threshold an input is flagged: energy -T*logsumexp(z/T) is high (above) far from the training
# data; the maximum of softmax(z/T) is low (below).
OOD_SCORES = {"energy": "above", "max_softmax": "below"}


def _logsumexp(z: Sequence[float]) -> float:
    m = max(z)
    return m + math.log(sum(math.exp(v - m) for v in z))


@dataclass(frozen=True)
class Calibration:
    """A classifier's confidence calibration and out-of-distribution rule, fitted at export on its
    validation split (export/calibration.py); the graph's logits stay as they are.

    `temperature`: probabilities are softmax(logits / temperature). An input is flagged out of
    distribution when its logits' score (`ood_score`, one of OOD_SCORES) is on that score's side
    of `ood_threshold`, or when its pixels are atypical: the mean squared z-score of its pixels
    against the validation inputs' per-pixel mean and scale (`pixel_mean`, `pixel_scale`, one
    row flattened) is above `pixel_threshold`, or when its roughness (core/images.py `roughness`:
    how much neighbouring pixels differ) is outside `roughness_range`, the (low, high) that
    validation inputs fall in: noise is rougher than any picture, a blank canvas smoother. Logits
    alone miss inputs that a model maps to ordinary logits (noise, for the MLP); per-pixel
    statistics miss noise on a model whose inputs vary everywhere (the scenes' textures); neither
    sees letters framed as digits are.
    `report`: what was measured (ECE before and after on the test split, shares flagged, sample
    sizes), for people; readers of the rule use the fields."""

    temperature: float
    ood_score: str
    ood_threshold: float
    pixel_mean: tuple[float, ...] = ()
    pixel_scale: tuple[float, ...] = ()
    pixel_threshold: float = math.inf
    report: dict[str, Any] = field(default_factory=dict)
    roughness_range: tuple[float, ...] = ()  # (low, high); () flags nothing

    def score(self, logits: Sequence[float]) -> float:
        """The out-of-distribution score of one row of logits."""
        z = [float(v) / self.temperature for v in logits]
        if self.ood_score == "energy":
            return -self.temperature * _logsumexp(z)
        return math.exp(max(z) - _logsumexp(z))

    def pixel_score(self, pixels: Sequence[float]) -> float:
        """How atypical one input's pixels are (flattened, the graph's input row): 0 without a
        pixel model."""
        if not self.pixel_mean:
            return 0.0
        return sum(((float(x) - m) / s) ** 2 for x, m, s in zip(pixels, self.pixel_mean, self.pixel_scale)) / len(
            self.pixel_mean
        )

    def flags(self, score: float, pixel_score: float = 0.0, roughness: float | None = None) -> bool:
        """Whether an input with these scores is out of distribution."""
        above = OOD_SCORES[self.ood_score] == "above"
        odd = score > self.ood_threshold if above else score < self.ood_threshold
        if roughness is not None and self.roughness_range:
            low, high = self.roughness_range
            odd = odd or not low <= roughness <= high
        return odd or pixel_score > self.pixel_threshold

    @classmethod
    def from_json(cls, data: Any) -> Calibration:
        ood = data.get("ood") if isinstance(data, dict) else None
        t = data.get("temperature") if isinstance(data, dict) else None
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise CardError(f"'calibration' needs a finite 'temperature' > 0, got {str(t)[:40]}")
        if not isinstance(ood, dict) or ood.get("score") not in OOD_SCORES:
            raise CardError(f"'calibration.ood' needs a 'score' of {', '.join(OOD_SCORES)}, got {str(ood)[:80]}")
        threshold = ood.get("threshold")
        if not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise CardError(f"'calibration.ood' needs a finite 'threshold', got {str(threshold)[:40]}")
        pixels = ood.get("pixels") or {}
        mean, scale = pixels.get("mean", []), pixels.get("scale", [])
        if len(mean) != len(scale) or any(not isinstance(s, (int, float)) or s <= 0 for s in scale):
            raise CardError("'calibration.ood.pixels' needs 'mean' and 'scale' (> 0) of one length")
        rough = ood.get("roughness") or {}
        bounds = rough.get("range", []) if isinstance(rough, dict) else None
        if not isinstance(bounds, list) or (
            bounds
            and (
                len(bounds) != 2
                or not all(isinstance(b, (int, float)) and math.isfinite(b) for b in bounds)
                or bounds[0] > bounds[1]
            )
        ):
            raise CardError("'calibration.ood.roughness.range' needs [low, high], finite, low <= high")
        report = {k: v for k, v in data.items() if k not in ("temperature", "ood")}
        measured = {k: v for k, v in ood.items() if k not in ("score", "threshold", "flag", "pixels", "roughness")}
        if measured:
            report["ood"] = measured
        return cls(
            float(t),
            ood["score"],
            float(threshold),
            tuple(mean),
            tuple(scale),
            float(pixels.get("threshold", math.inf)),
            report,
            tuple(float(b) for b in bounds),
        )

    def to_json(self) -> dict[str, Any]:
        ood: dict[str, Any] = {
            "score": self.ood_score,
            "threshold": self.ood_threshold,
            "flag": OOD_SCORES[self.ood_score],
        }
        if self.pixel_mean:
            ood["pixels"] = {
                "score": "mean squared z-score of the pixels",
                "threshold": self.pixel_threshold,
                "flag": "above",
                "mean": list(self.pixel_mean),
                "scale": list(self.pixel_scale),
            }
        if self.roughness_range:
            ood["roughness"] = {
                "score": "mean squared difference of neighbouring pixels (core/images.py roughness)",
                "range": list(self.roughness_range),
                "flag": "outside",
            }
        return {"temperature": self.temperature, **self.report, "ood": {**ood, **self.report.get("ood", {})}}


@dataclass(frozen=True)
class ModelCard:
    """One exported graph, served under `name`; `family` is the registered model clients name in
    task requests (the VAE's decoder graph `vae_decoder` belongs to the family `vae`)."""

    name: str
    version: str
    tasks: tuple[str, ...]
    file: str
    sha256: str
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    labels: tuple[str, ...]
    family: str = ""
    chapter: str = ""
    format: str = "onnx"
    generation: Generation | None = None
    preprocessing: dict[str, Any] | None = None
    sampling: dict[str, Any] | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    libraries: dict[str, str] = field(default_factory=dict)
    # A few held-out inputs the model never saw in training, with their targets (class index, mask,
    # ...): what a load generator or a first-time user sends without the dataset at hand.
    examples: dict[str, list[Any]] = field(default_factory=dict)
    # Files stored beside the graph, by key (e.g. "loss_curve": the training run's loss per epoch,
    # a PNG): {"file": name in the model's directory, "sha256": ..., "media_type": ...}.
    artifacts: dict[str, dict[str, str]] = field(default_factory=dict)
    # Classifiers exported since 2026-11-26: temperature and out-of-distribution rule (None before).
    calibration: Calibration | None = None
    # The golden-input check every session must pass before its worker becomes ready (any
    # provider): {"artifact": key in `artifacts` of an .npz holding "input/<name>" and
    # "output/<name>" arrays, "tolerance_abs": the largest absolute error accepted, "reference":
    # what computed the outputs}. Empty on cards exported before 2026-11-26 (no check).
    golden: dict[str, Any] = field(default_factory=dict)
    # The numeric precision of the graph's weights and arithmetic: "fp32" (the exported graph),
    # or a variant derived from an fp32 version ("fp16", "int8": export/variants.py), stored as a
    # further version of the same model and served only where selected.
    precision: str = "fp32"
    # A variant's origin and gate: {"of": the fp32 version, "gate": what was measured against
    # it and the margins it had to meet}; empty for fp32 graphs.
    variant: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.family:
            object.__setattr__(self, "family", self.name)

    # -- what readers ask of a card ------------------------------------------------------------
    @property
    def input(self) -> TensorSpec:
        """The single input of a tensor model (image, noise)."""
        return self.inputs[0]

    @property
    def row_shape(self) -> tuple[int, ...]:
        """The shape of one row of the first input, without the batch axis (e.g. (1, 28, 28))."""
        return tuple(int(d) for d in self.inputs[0].shape[1:])

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @property
    def is_text(self) -> bool:
        return self.generation is not None

    @property
    def temperature(self) -> float:
        """The classifier's softmax temperature: 1 for a card without calibration."""
        return self.calibration.temperature if self.calibration else 1.0

    # -- JSON ----------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, data: Any) -> ModelCard:
        if not isinstance(data, dict):
            raise CardError("a model card is a JSON object")
        missing = [
            k
            for k in (
                "name",
                "version",
                "tasks",
                "file",
                "sha256",
                "opset",
                "inputs",
                "outputs",
                "max_batch_size",
                "labels",
            )
            if k not in data
        ]
        if missing:
            raise CardError(f"model card {str(data.get('name'))[:64]!r} lacks {', '.join(missing)}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.update(
            tasks=tuple(data["tasks"]),
            labels=tuple(data["labels"]),
            inputs=tuple(TensorSpec.from_json(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_json(t) for t in data["outputs"]),
            generation=Generation.from_json(data["generation"]) if data.get("generation") else None,
            calibration=Calibration.from_json(data["calibration"]) if data.get("calibration") else None,
        )
        if values.get("precision", "fp32") not in PRECISIONS:
            raise CardError(
                f"model card {data['name']!r}: precision {str(values['precision'])[:16]!r}, accepted: {', '.join(PRECISIONS)}"
            )
        if not values["inputs"] or not values["outputs"]:
            raise CardError(f"model card {data['name']!r} has no inputs or no outputs")
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(
            tasks=list(self.tasks),
            labels=list(self.labels),
            inputs=[t.to_json() for t in self.inputs],
            outputs=[t.to_json() for t in self.outputs],
            generation=self.generation.to_json() if self.generation else None,
            calibration=self.calibration.to_json() if self.calibration else None,
        )
        return data

    @property
    def tag(self) -> str:
        """The model store's tag of this graph, `name:version`: one served version."""
        return f"{self.name}:{self.version}"

    def public(self, with_examples: bool = False) -> dict[str, Any]:
        """What the service tells clients (GET /models): no paths of the training machine."""
        data = self.to_json()
        data["checkpoint"] = {k: v for k, v in self.checkpoint.items() if k != "path"}
        data["dataset"] = {k: v for k, v in self.dataset.items() if k != "source"}  # may name a local folder
        if not with_examples:
            data.pop("examples")
        return data
