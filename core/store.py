"""The BentoML model store: what the exporter saves and the service serves.

The service is driven by artifacts, as Triton is by its model repository: every model the
exporter saved (label project=ee559) is served, newest version per name, unless the service's
settings name a subset. A stored model is one ONNX graph and its card; `load` refuses it when the
file is not the one the card describes (sha256) or reaches outside its directory.
BentoML and onnx are imported when used, so reading a card needs neither.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .card import CARD_FILE, CardError, ModelCard

PROJECT_LABEL = "ee559"


class ModelStoreError(RuntimeError):
    """The model store does not hold what the service needs, or a file does not match its card."""


@dataclass(frozen=True)
class StoredModel:
    name: str
    tag: str
    path: Path
    card: ModelCard

    @property
    def onnx_path(self) -> Path:
        return self.path / self.card.file


def home() -> str:
    """Where the store is, for messages."""
    return os.environ.get("BENTOML_HOME", "~/bentoml")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, list[str]]:
    """name -> versions of every exported model in the store, newest first."""
    import bentoml

    ours = [m for m in bentoml.models.list() if m.info.labels.get("project") == PROJECT_LABEL]
    versions: dict[str, list[str]] = {}
    for m in sorted(ours, key=lambda m: m.info.creation_time, reverse=True):
        versions.setdefault(m.tag.name, []).append(str(m.tag.version))
    return versions


def discover(names: tuple[str, ...] | None = None) -> dict[str, str]:
    """name -> concrete tag of the newest exported model of that name in the store; `names`
    (None: every one) must all be there."""
    versions = _versions()
    if names is not None:
        missing = [n for n in names if n not in versions]
        if missing:
            raise ModelStoreError(
                f"{', '.join(missing)}: not in the model store ({home()}); export first: python -m export all"
            )
    return {name: f"{name}:{versions[name][0]}" for name in sorted(versions if names is None else names)}


def select(entries: tuple[str, ...] | None = None) -> list[str]:
    """The tags to serve, in the order given: `name` is the newest stored version of that name,
    `name:version` that version (several versions of a name may be served side by side; the
    first listed is the one requests get when they name no version). None: the newest of every
    stored model."""
    if entries is None:
        return list(discover().values())
    versions = _versions()
    tags: list[str] = []
    for entry in entries:
        name, _, version = entry.partition(":")
        if name not in versions:
            raise ModelStoreError(f"{name}: not in the model store ({home()}); export first: python -m export all")
        if version and version not in versions[name]:
            raise ModelStoreError(
                f"{entry}: no such version in the model store ({home()}); "
                f"stored versions of {name}, newest first: {', '.join(versions[name])}"
            )
        tag = f"{name}:{version or versions[name][0]}"
        if tag not in tags:
            tags.append(tag)
    return tags


def modified(tag: str) -> float:
    """When the stored entry `tag` last changed (its newest file), to notice a fixed export."""
    import bentoml

    path = Path(bentoml.models.get(tag).path)
    return max((p.stat().st_mtime for p in path.iterdir()), default=path.stat().st_mtime)


def read_card(path: Path) -> ModelCard:
    try:
        return ModelCard.from_json(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:  # CardError is a ValueError
        raise ModelStoreError(f"unreadable model card {path}: {exc}") from exc


def load(tag: str) -> StoredModel:
    """Read a stored model's card and refuse it if the ONNX file is not the one the card describes."""
    import bentoml

    model = bentoml.models.get(tag)
    path = Path(model.path)
    card = read_card(path / CARD_FILE)
    onnx_file = (path / card.file).resolve()
    if onnx_file.parent != path.resolve():
        raise ModelStoreError(f"{tag}: the card points outside the model directory: {card.file!r}")
    digest = sha256_file(onnx_file)
    if digest != card.sha256:
        raise ModelStoreError(f"{tag}: {onnx_file} has sha256 {digest}, its model card says {card.sha256}")
    check_external_data(onnx_file)
    return StoredModel(name=model.tag.name, tag=str(model.tag), path=path, card=card)


def newest_card(name: str) -> ModelCard | None:
    """The card of the newest stored model called `name`, if any."""
    import bentoml

    try:
        model = bentoml.models.get(f"{name}:latest")
    except bentoml.exceptions.NotFound:
        return None
    return read_card(Path(model.path) / CARD_FILE)


def describe_artifact(path: Path, file: str, media_type: str) -> dict[str, str]:
    """The card's entry for a file stored beside the graph under the name `file`."""
    if Path(file).name != file or file in (CARD_FILE, "model.yaml"):
        raise ValueError(f"an artifact is a plain file name of its own, got {file!r}")
    return {"file": file, "sha256": sha256_file(path), "media_type": media_type}


def _copy_artifacts(card: ModelCard, sources: dict[str, Path], folder: Path) -> None:
    missing = sorted(set(card.artifacts) ^ set(sources))
    if missing:
        raise ModelStoreError(f"{card.tag}: artifacts named by the card and given to save differ: {missing}")
    for key, entry in card.artifacts.items():
        if sha256_file(sources[key]) != entry["sha256"]:
            raise ModelStoreError(f"{card.tag}: {sources[key]} is not the {key} its card describes")
        shutil.copyfile(sources[key], folder / entry["file"])


def save(card: ModelCard, onnx_file: Path, artifacts: dict[str, Path] | None = None) -> str:
    """Put the ONNX file, its card and the card's artifacts (key -> source file) into the store;
    the tag. The same graph exported again (same bytes, same version) keeps its entry, with the new
    card and artifacts (a newer exporter may record more)."""
    import bentoml

    tag = f"{card.name}:{card.version}"
    try:
        existing = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        pass
    else:
        _copy_artifacts(card, artifacts or {}, Path(existing.path))
        (Path(existing.path) / CARD_FILE).write_text(json.dumps(card.to_json(), indent=2))
        return str(existing.tag)
    labels = {"project": PROJECT_LABEL, "tasks": ",".join(card.tasks)}
    metadata = {
        "sha256": card.sha256,
        "opset": card.opset,
        **{k: float(v) for k, v in card.metrics.items() if k.startswith("test_")},
    }
    with bentoml.models.create(tag, labels=labels, metadata=metadata, module="ee559.onnx") as m:
        shutil.copyfile(onnx_file, Path(m.path) / card.file)
        _copy_artifacts(card, artifacts or {}, Path(m.path))
        (Path(m.path) / CARD_FILE).write_text(json.dumps(card.to_json(), indent=2))
    return tag


def read_artifact(card: ModelCard, key: str) -> bytes | None:
    """The stored file `key` of the served version `card` (None when its card names none), refused
    when it lies outside the model's directory or is not the file the card describes."""
    import bentoml

    entry = card.artifacts.get(key)
    if entry is None:
        return None
    folder = Path(bentoml.models.get(card.tag).path).resolve()
    path = (folder / entry["file"]).resolve()
    if path.parent != folder:
        raise ModelStoreError(f"{card.tag}: the card's {key} points outside the model directory")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ModelStoreError(f"{card.tag}: {path} is not the {key} its card describes (sha256)")
    return data


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
        if (
            not location
            or Path(location).is_absolute()
            or ".." in Path(location).parts
            or (target != root and root not in target.parents)
        ):
            raise ModelStoreError(
                f"{onnx_file}: tensor {tensor.name[:64]!r} takes its data from {location[:200]!r}, "
                "outside the model's directory; refused"
            )


__all__ = [
    "CARD_FILE",
    "PROJECT_LABEL",
    "CardError",
    "ModelStoreError",
    "StoredModel",
    "check_external_data",
    "describe_artifact",
    "discover",
    "home",
    "load",
    "newest_card",
    "read_artifact",
    "read_card",
    "save",
    "sha256_file",
]
