"""Find the exported models in the BentoML model store and check them against their cards.

The service is driven by artifacts, as Triton is by its model repository: every model the
exporter saved (label project=ee559) is served, newest version per name, unless EE559_MODELS
names a subset. Nothing here imports torch or the training code.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_LABEL = "ee559"
CARD = "model_card.json"


class ModelStoreError(RuntimeError):
    """The model store does not hold what the service needs, or a file does not match its card."""


@dataclass(frozen=True)
class ServedModel:
    name: str
    tag: str
    path: Path
    card: dict[str, Any]

    @property
    def onnx_path(self) -> Path:
        return self.path / self.card["file"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def requested_names() -> list[str] | None:
    raw = os.environ.get("EE559_MODELS", "").strip()
    return [n.strip() for n in raw.split(",") if n.strip()] or None


def discover(names: list[str] | None = None) -> dict[str, str]:
    """name -> concrete tag of the newest exported model of that name in the store."""
    import bentoml

    newest: dict[str, Any] = {}
    for m in bentoml.models.list():
        if m.info.labels.get("project") != PROJECT_LABEL:
            continue
        name = m.tag.name
        if name not in newest or m.info.creation_time > newest[name].info.creation_time:
            newest[name] = m
    if names is not None:
        missing = [n for n in names if n not in newest]
        if missing:
            raise ModelStoreError(
                f"EE559_MODELS asks for {', '.join(missing)}, not in the model store "
                f"({os.environ.get('BENTOML_HOME', '~/bentoml')}); export them first: python -m export all"
            )
        newest = {n: newest[n] for n in names}
    return {name: str(m.tag) for name, m in sorted(newest.items())}


def load(tag: str) -> ServedModel:
    """Read a stored model's card and refuse it if the ONNX file is not the one the card describes."""
    import bentoml

    model = bentoml.models.get(tag)
    path = Path(model.path)
    try:
        card = json.loads((path / CARD).read_text())
    except (OSError, ValueError) as exc:
        raise ModelStoreError(f"{tag}: unreadable model card {path / CARD}: {exc}") from exc
    onnx_file = (path / card["file"]).resolve()
    if onnx_file.parent != path.resolve():
        raise ModelStoreError(f"{tag}: the card points outside the model directory: {card['file']!r}")
    digest = sha256_file(onnx_file)
    if digest != card["sha256"]:
        raise ModelStoreError(f"{tag}: {onnx_file} has sha256 {digest}, its model card says {card['sha256']}")
    check_external_data(onnx_file)
    return ServedModel(name=model.tag.name, tag=str(model.tag), path=path, card=card)


def check_external_data(onnx_file: Path) -> None:
    """Refuse tensors whose external data lies outside the model's directory: an absolute path, a
    `..`, or a link that leads out (the ONNX external-data path-traversal CVEs). Our exporter
    writes single-file models; this guards against a tampered or foreign one."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    root = onnx_file.parent.resolve()
    model = onnx.load(str(onnx_file), load_external_data=False)
    for tensor in _get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if (not location or Path(location).is_absolute() or ".." in Path(location).parts
                or (target != root and root not in target.parents)):
            raise ModelStoreError(f"{onnx_file}: tensor {tensor.name[:64]!r} takes its data from {location[:200]!r}, "
                                  "outside the model's directory; refused")
