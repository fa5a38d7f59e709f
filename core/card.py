"""The model card: the contract between the exporter and everything that serves or calls a model.

Written once by `python -m export` beside each ONNX graph (model_card.json), read by the service,
the benchmarks and the load generator. Like Triton's config.pbtxt it is a typed schema, not a dict
read by key: `ModelCard.from_json(data)` checks the fields every reader relies on and
`to_json()` writes them back. Standard library only, so a load-generating machine can read cards
with neither torch, BentoML nor ONNX Runtime installed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

CARD_FILE = "model_card.json"


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
