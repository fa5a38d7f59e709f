"""The BentoML model store: what the exporter saves and the service serves.

The service is driven by artifacts, as Triton is by its model repository: every model the
exporter saved (label project=ee559) is served, newest version per name, unless the service's
settings name a subset. A stored model is one ONNX graph and its card; `load` refuses it when the
file is not the one the card describes (sha256) or reaches outside its directory.

Each stored version has a precision (label `precision`, the card's; entries saved before the
label existed are fp32). FP16 and INT8 variants (export/variants.py) are further versions of the
same name, derived from an fp32 version (label `variant_of`): the default selection never picks
them, so exporting a variant never changes what a default server serves. Asked for a precision,
`select` picks, per name, the newest variant of that precision derived from the fp32 version it
would serve, falling back to that fp32 version (with a log line) where the store holds none.
BentoML and onnx are imported when used, so reading a card needs neither.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .card import CARD_FILE, PRECISIONS, CardError, ModelCard

PROJECT_LABEL = "ee559"
FP32 = PRECISIONS[0]

log = logging.getLogger("ee559.store")
_said: set[tuple[str, str, str]] = set()  # fallbacks logged once per process (a reloader selects again)


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


@dataclass(frozen=True)
class _Entry:
    version: str
    precision: str
    of: str  # the fp32 version a variant was derived from ("" for fp32)


def _stored() -> dict[str, list[_Entry]]:
    """name -> every exported version in the store with its precision, newest first."""
    import bentoml

    ours = [m for m in bentoml.models.list() if m.info.labels.get("project") == PROJECT_LABEL]
    stored: dict[str, list[_Entry]] = {}
    for m in sorted(ours, key=lambda m: m.info.creation_time, reverse=True):
        labels = m.info.labels
        entry = _Entry(str(m.tag.version), labels.get("precision", FP32), labels.get("variant_of", ""))
        stored.setdefault(m.tag.name, []).append(entry)
    return stored


def _versions(precision: str | None = FP32) -> dict[str, list[str]]:
    """name -> versions of every exported model in the store, newest first: those of `precision`
    (None: of every precision). A name with no version of that precision is left out."""
    versions: dict[str, list[str]] = {}
    for name, entries in _stored().items():
        chosen = [e.version for e in entries if precision is None or e.precision == precision]
        if chosen:
            versions[name] = chosen
    return versions


def discover(names: tuple[str, ...] | None = None) -> dict[str, str]:
    """name -> concrete tag of the newest exported fp32 model of that name in the store (variants
    are never discovered); `names` (None: every one) must all be there."""
    versions = _versions()
    if names is not None:
        missing = [n for n in names if n not in versions]
        if missing:
            raise ModelStoreError(
                f"{', '.join(missing)}: not in the model store ({home()}); export first: python -m export all"
            )
    return {name: f"{name}:{versions[name][0]}" for name in sorted(versions if names is None else names)}


def _of_precision(name: str, entries: list[_Entry], precision: str) -> str:
    """The version of `name` served for `precision`: the newest fp32 version, or the newest
    variant of `precision` derived from it (that fp32 version, with a log line, where none is)."""
    fp32 = next((e.version for e in entries if e.precision == FP32), None)
    if fp32 is None:
        raise ModelStoreError(
            f"{name}: no fp32 version in the model store ({home()}); export first: python -m export {name}"
        )
    if precision == FP32:
        return fp32
    variant = next((e.version for e in entries if e.precision == precision and e.of == fp32), None)
    if variant is None:
        if (name, precision, fp32) not in _said:
            _said.add((name, precision, fp32))
            log.warning(
                "%s: no %s variant of version %s in the model store; serving that fp32 version", name, precision, fp32
            )
        return fp32
    return variant


def select(entries: tuple[str, ...] | None = None, precisions: tuple[str, ...] = (FP32,)) -> list[str]:
    """The tags to serve, in the order given: `name` is, for each of `precisions` in turn, the
    newest stored fp32 version of that name or its newest variant of that precision
    (`_of_precision`), `name:version` that version whatever its precision (several versions of a
    name may be served side by side; the first listed is the one requests get when they name no
    version). None: every stored model by name."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise ModelStoreError(f"precision {', '.join(unknown)[:40]!r}; accepted: {', '.join(PRECISIONS)}")
    stored = _stored()
    if entries is None:
        entries = tuple(sorted(n for n, e in stored.items() if any(v.precision == FP32 for v in e)))
    tags: list[str] = []
    for entry in entries:
        name, _, version = entry.partition(":")
        if name not in stored:
            raise ModelStoreError(f"{name}: not in the model store ({home()}); export first: python -m export all")
        if version and version not in [e.version for e in stored[name]]:
            raise ModelStoreError(
                f"{entry}: no such version in the model store ({home()}); "
                f"stored versions of {name}, newest first: {', '.join(e.version for e in stored[name])}"
            )
        chosen = [version] if version else [_of_precision(name, stored[name], p) for p in precisions]
        for v in chosen:
            if f"{name}:{v}" not in tags:
                tags.append(f"{name}:{v}")
    return tags


def variants_of(tag: str) -> set[str]:
    """The precisions of the variants stored for the fp32 version `tag` (name:version)."""
    name, _, version = tag.partition(":")
    return {e.precision for e in _stored().get(name, []) if e.of == version}


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


def newest_card(name: str, precision: str = FP32) -> ModelCard | None:
    """The card of the newest stored version of `precision` (fp32: the exported graph, never a
    variant) of the model called `name`, if any."""
    import bentoml

    versions = _versions(precision).get(name)
    if not versions:
        return None
    return read_card(Path(bentoml.models.get(f"{name}:{versions[0]}").path) / CARD_FILE)


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
    labels = {"project": PROJECT_LABEL, "tasks": ",".join(card.tasks), "precision": card.precision}
    if card.variant.get("of"):
        labels["variant_of"] = str(card.variant["of"])
    metadata = {
        "sha256": card.sha256,
        "opset": card.opset,
        **{k: float(v) for k, v in card.metrics.items() if k.startswith("test_")},
    }
    # BentoML points `name:latest` at the newest entry; a variant must not move it (`bentoml models
    # get lenet:latest` and everything else reading it mean the version served by default).
    keep = None
    if card.precision != FP32:
        try:
            keep = bentoml.models.get(f"{card.name}:latest")
        except bentoml.exceptions.NotFound:
            pass
    with bentoml.models.create(tag, labels=labels, metadata=metadata, module="ee559.onnx") as m:
        shutil.copyfile(onnx_file, Path(m.path) / card.file)
        _copy_artifacts(card, artifacts or {}, Path(m.path))
        (Path(m.path) / CARD_FILE).write_text(json.dumps(card.to_json(), indent=2))
    if keep is not None:
        (Path(keep.path).parent / "latest").write_text(str(keep.tag.version))
    return tag


def read_artifact(card: ModelCard, key: str, folder: Path | None = None) -> bytes | None:
    """The stored file `key` of the served version `card` (None when its card names none), refused
    when it lies outside the model's directory or is not the file the card describes. `folder`:
    the model's directory where the caller has it (StoredModel.path), else the store is asked."""
    entry = card.artifacts.get(key)
    if entry is None:
        return None
    if folder is None:
        import bentoml

        folder = Path(bentoml.models.get(card.tag).path)
    folder = folder.resolve()
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
    "FP32",
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
    "select",
    "sha256_file",
]
