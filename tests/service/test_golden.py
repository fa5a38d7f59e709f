"""Golden inputs (core/golden.py): every exported graph stores a few inputs with PyTorch's outputs
for them; every serving session must reproduce them on the provider it got before its worker is
ready, through the path requests take (IO binding or not), or the worker stays unready with a
line naming model, provider and error."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import requests

from core import golden, store
from core.card import CARD_FILE, ModelCard
from core.session import make_session
from service.engine import Engine, tensor_runner
from service.settings import Settings

from ..conftest import start_server, stop_server


def _arrays() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return {"image": rng.random((4, 1, 28, 28), dtype=np.float32)}, {
        "logits": rng.standard_normal((4, 10)).astype(np.float32),
        "tokens": np.arange(4, dtype=np.int64),
    }


def test_a_golden_file_round_trips_and_the_check_reports_the_worst_error(tmp_path: Path):
    inputs, outputs = _arrays()
    data = golden.write(tmp_path / golden.FILE, inputs, outputs).read_bytes()
    got_in, got_out = golden.read(data)
    assert got_in.keys() == inputs.keys() and np.array_equal(got_in["image"], inputs["image"])
    assert np.array_equal(got_out["tokens"], outputs["tokens"])
    off = {**outputs, "logits": outputs["logits"] + 1e-6}
    assert golden.check(lambda feeds: off, data, 1e-5, "m on P") == pytest.approx(1e-6, rel=0.2)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda o: {**o, "logits": o["logits"] + 1e-3}, "logits max abs error 0.001 > tolerance 1e-05"),
        (lambda o: {**o, "logits": np.full_like(o["logits"], np.nan)}, "logits max abs error nan"),
        (lambda o: {**o, "logits": o["logits"][:2]}, "logits has shape (2, 10), expected (4, 10)"),
        (lambda o: {"logits": o["logits"]}, "no output 'tokens'"),
        (lambda o: {**o, "tokens": o["tokens"] + 1}, "tokens differs in 4 of 4 values"),  # integers: exact
    ],
)
def test_the_check_fails_naming_where_which_output_and_why(tmp_path: Path, change, words: str):
    inputs, outputs = _arrays()
    data = golden.write(tmp_path / golden.FILE, inputs, outputs).read_bytes()
    with pytest.raises(golden.GoldenError) as err:
        golden.check(lambda feeds: change(outputs), data, 1e-5, "lenet:abc on CUDAExecutionProvider")
    assert str(err.value).startswith("lenet:abc on CUDAExecutionProvider: golden check failed: ")
    assert words in str(err.value)


def _stored(exported) -> dict[str, store.StoredModel]:
    return {tag: store.load(tag) for tag in store.discover().values()}


def test_every_exported_graph_stores_golden_inputs_its_session_reproduces(exported):
    models = _stored(exported)
    assert set(m.card.name for m in models.values()) >= {"lenet", "resnet", "unet", "gpt", "vae_decoder"}
    for model in models.values():
        card = model.card
        assert card.golden["artifact"] == golden.ARTIFACT and card.golden["tolerance_abs"] > 0, card.name
        assert card.golden["export_check"]["provider"] == "CPUExecutionProvider"
        data = store.read_artifact(card, golden.ARTIFACT)
        assert data is not None
        session, _, _ = make_session(model.onnx_path, "cpu")
        names = card.output_names
        golden.check(
            lambda feeds: dict(zip(names, session.run(names, feeds))), data, card.golden["tolerance_abs"], card.tag
        )


def test_io_binding_gives_the_outputs_of_a_plain_run_on_the_cpu(exported):
    for model in _stored(exported).values():
        card = model.card
        if card.is_text:
            continue
        session, used, _ = make_session(model.onnx_path, "cpu")
        x = np.random.default_rng(1).random((5, *card.row_shape), dtype=np.float32)
        plain, bound = tensor_runner(session, card, used, False)(x), tensor_runner(session, card, used, True)(x)
        assert len(plain) == len(bound) == len(card.outputs)
        for a, b in zip(plain, bound):
            assert a.shape == b.shape and np.array_equal(a, b), card.name


def _tamper(exported, home: Path, name: str = "lenet") -> str:
    """A store in `home` holding `name` with golden outputs that its graph does not compute (the
    card's checksum updated, as a corrupted or mismatched export would be); its tag."""
    tag = store.discover((name,))[name]
    src = store.load(tag)
    folder = home / "models" / name / tag.partition(":")[2]
    shutil.copytree(src.path, folder)
    (home / "models" / name / "latest").write_text(tag.partition(":")[2])
    inputs, outputs = golden.read((folder / golden.FILE).read_bytes())
    first = next(iter(outputs))
    golden.write(folder / golden.FILE, inputs, {**outputs, first: outputs[first] + 0.5})
    card = src.card
    artifacts = {**card.artifacts, golden.ARTIFACT: store.describe_artifact(folder / golden.FILE, golden.FILE, "x")}
    card = replace(card, artifacts=artifacts)
    (folder / CARD_FILE).write_text(json.dumps(card.to_json()))
    return tag


def test_a_session_that_misses_its_golden_outputs_is_not_served_and_says_why(exported, tmp_path: Path):
    tag = _tamper(exported, tmp_path)
    model = store.StoredModel(tag.partition(":")[0], tag, tmp_path / "models" / "lenet" / tag.partition(":")[2], None)  # type: ignore[arg-type]
    model = replace(model, card=ModelCard.from_json(json.loads((model.path / CARD_FILE).read_text())))
    for binding in ("on", "off"):
        engine = Engine({tag: model}, Settings(provider="cpu", io_binding=binding))
        assert tag not in engine.cards and tag not in engine.batchers
        assert list(engine.unready) == [tag]
        why = engine.unready[tag]
        assert why.startswith(f"{tag} on CPUExecutionProvider: golden check failed: logits max abs error 0.5")


def test_a_worker_whose_golden_check_fails_stays_unready(exported, runs: Path, tmp_path: Path):
    home = tmp_path / "home"
    tag = _tamper(exported, home)
    log = runs / "golden-unready.log"
    url, proc = start_server({"EE559_MODELS": "lenet"}, log=log, home=home)
    try:
        deadline, line = time.monotonic() + 90, ""
        while time.monotonic() < deadline and not line:
            assert proc.poll() is None, log.read_text()[-3000:]
            line = next((s for s in log.read_text().splitlines() if "golden check failed" in s), "")
            time.sleep(0.5)
        assert f"not ready: {tag} on CPUExecutionProvider: golden check failed: logits" in line
        time.sleep(2)  # the worker is up: its probes answer, and say not ready
        for path in ("/readyz", "/v2/health/ready"):
            assert requests.get(url + path, timeout=5).status_code == 503, path
        assert requests.get(url + "/livez", timeout=5).status_code == 200
    finally:
        stop_server(proc)


def test_integer_outputs_must_match_exactly_whatever_the_tolerance(tmp_path: Path):
    inputs, outputs = _arrays()
    data = golden.write(tmp_path / golden.FILE, inputs, outputs).read_bytes()
    wrong = {**outputs, "tokens": outputs["tokens"] * 0}
    with pytest.raises(golden.GoldenError, match="tokens differs in 3 of 4 values"):
        golden.check(lambda feeds: wrong, data, float("inf"), "gpt on CPU")
