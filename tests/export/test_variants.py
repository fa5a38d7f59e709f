"""FP16 and INT8 variants (export/variants.py): the gate on synthetic figures, the variants of the
session's LeNet made and stored with their gate in the card, never picked by the default selection
but by a precision, and refused (not stored) when they miss their gate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.spec import image_classifier_spec, segmenter_spec
from export.variants import GATES, Gate, Measured, gate_for, judge, summary, variant_models

from ..conftest import ROOT


def _store(home: Path, script: str) -> subprocess.CompletedProcess:
    """Run `script` against the model store in `home` (BentoML reads its home once per process)."""
    env = {**os.environ, "BENTOML_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


# -- the gate, on figures made up here -----------------------------------------------------------
def test_every_image_model_with_a_task_figure_gets_a_gate_and_the_others_none():
    assert variant_models() == ["mlp", "lenet", "resnet", "unet", "autoencoder"]
    assert gate_for(("classify", "explain")).metric == "accuracy"
    assert gate_for(("segment",)).metric == "mean_iou"
    assert gate_for(("denoise", "embed")).metric == "psnr_denoised_db"
    assert gate_for(("reconstruct", "generate")) is None and gate_for(("generate_text",)) is None


def _classifier(accuracy: float, logits: np.ndarray) -> Measured:
    n = len(logits)
    return Measured({"accuracy": accuracy, "examples": float(n)}, np.zeros((n, 1, 28, 28)), {"logits": logits})


def test_a_variant_within_its_margins_passes_and_its_record_says_what_was_measured():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1000, 10))
    record, failures = judge(
        "lenet", "int8", image_classifier_spec(), GATES["classify"],
        _classifier(0.970, logits), _classifier(0.966, logits + rng.normal(0, 1e-3, logits.shape)),
    )  # fmt: skip
    assert failures == [] and record["passed"]
    assert record["examples"] == 1000 and record["agreement_over"] == 1000 and record["agreement_unit"] == "examples"
    assert record["top1_agreement"] > 0.99 and record["fp32"] == 0.970 and record["int8"] == 0.966
    assert record["margin"] == 0.005 and 0 < record["max_abs_error"]["logits"] < 0.01
    assert "gate passed" in summary("lenet", "int8", GATES["classify"], record)


def test_a_variant_over_its_margin_or_under_the_agreement_fails_naming_metric_values_and_margin():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1000, 10))
    flipped = logits.copy()
    flipped[:20] = -flipped[:20]  # 2% of the answers change: agreement 98%
    _, failures = judge("lenet", "int8", image_classifier_spec(), GATES["classify"], _classifier(0.970, logits),
                        _classifier(0.960, flipped))  # fmt: skip
    assert len(failures) == 2
    assert "accuracy 97.00% (fp32) -> 96.00% (int8)" in failures[0] and "0.5 points" in failures[0]
    assert "top-1 agreement" in failures[1] and "99%" in failures[1]
    # Better than fp32 is never refused: the margin is how far below fp32 a variant may fall.
    _, failures = judge("lenet", "fp16", image_classifier_spec(), GATES["classify"], _classifier(0.97, logits),
                        _classifier(0.99, logits))  # fmt: skip
    assert failures == []


def test_the_segmenter_agrees_per_pixel():
    logits = np.random.default_rng(2).normal(size=(20, 5, 32, 32))
    seg = Measured({"mean_iou": 0.95, "examples": 20.0}, np.zeros((20, 3, 32, 32)), {"logits": logits})
    record, failures = judge("unet", "fp16", segmenter_spec(), GATES["segment"], seg, seg)
    assert failures == [] and record["agreement_over"] == 20 * 32 * 32 and record["agreement_unit"] == "pixels"


# -- the session's LeNet ---------------------------------------------------------------------------
def test_variants_are_stored_as_versions_of_the_model_with_their_gate_in_the_card(variant_home):
    home, cards, printed = variant_home
    assert set(cards) == {"fp32", "fp16", "int8"}
    fp32 = cards["fp32"]
    for precision in ("fp16", "int8"):
        card = cards[precision]
        gate = card["variant"]["gate"]
        assert (
            card["name"] == "lenet" and card["version"] != fp32["version"] and card["variant"]["of"] == fp32["version"]
        )
        assert gate["passed"] and gate["split"] == "test" and gate["examples"] >= 100
        assert gate["top1_agreement"] >= 0.99 and gate[precision] >= gate["fp32"] - 0.005
        assert card["metrics"]["test_accuracy"] == gate[precision] and card["calibration"]["temperature"] > 0
        assert card["golden"]["tolerance_abs"] >= card["golden"]["export_check"]["max_abs_error"]
        assert card["variant"]["recipe"]["tool"].startswith("onnxruntime")
        assert f"lenet {precision}: gate passed: top-1 agreement" in printed
    assert cards["int8"]["variant"]["recipe"]["calibration"]["split"] == "train"
    # The INT8 graph really holds quantised weights; the FP16 one half-precision initialisers.
    import onnx

    graphs = {p: onnx.load(str(home / "models" / "lenet" / c["version"] / "model.onnx")) for p, c in cards.items()}
    ops = {p: {n.op_type for n in g.graph.node} for p, g in graphs.items()}
    assert "QuantizeLinear" in ops["int8"] and "QuantizeLinear" not in ops["fp32"]
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graphs["fp16"].graph.initializer)
    assert graphs["fp16"].graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # clients send float32


def test_the_default_selection_never_picks_a_variant_and_a_precision_does(variant_home):
    home, cards, _ = variant_home
    v = {p: c["version"] for p, c in cards.items()}
    calls = [
        "store.select()",
        "store.select(('lenet',))",
        "store.discover()",
        "store.newest_card('lenet').version",
        "store.select(None, ('int8',))",
        "store.select(('lenet',), ('fp16', 'fp32'))",
        f"store.select(('lenet:{v['int8']}',))",
    ]
    run = _store(home, f"import json; from core import store\nprint(json.dumps([{', '.join(calls)}]))")
    assert run.returncode == 0, run.stderr[-2000:]
    default, by_name, discovered, newest, int8, fp16_then_fp32, pinned = json.loads(run.stdout)
    assert default == by_name == [f"lenet:{v['fp32']}"] and discovered == {"lenet": f"lenet:{v['fp32']}"}
    assert newest == v["fp32"]  # what `export --if-missing` and the benchmarks compare with
    assert int8 == [f"lenet:{v['int8']}"] and fp16_then_fp32 == [f"lenet:{v['fp16']}", f"lenet:{v['fp32']}"]
    assert pinned == [f"lenet:{v['int8']}"]  # a version named is served whatever its precision


def test_a_precision_without_a_variant_of_the_served_version_falls_back_to_fp32_with_a_log_line(exported, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(Path(os.environ["BENTOML_HOME"]) / "models" / "mlp", home / "models" / "mlp")
    run = _store(
        home,
        "import logging; logging.basicConfig(level='INFO'); from core import store\nprint(store.select(None, ('int8',)))",
    )
    fp32 = (home / "models" / "mlp" / "latest").read_text().strip()
    assert run.returncode == 0 and run.stdout.strip() == f"['mlp:{fp32}']"
    assert f"mlp: no int8 variant of version {fp32}" in run.stderr


def test_a_variant_that_misses_its_gate_is_not_stored(exported, tmp_path):
    """An absurd margin (FP16 must beat fp32 by 50 points) and a broken quantisation (activation
    ranges fitted on inputs 1000 times too bright: every activation saturates)."""
    home = tmp_path / "home"
    shutil.copytree(Path(os.environ["BENTOML_HOME"]) / "models" / "lenet", home / "models" / "lenet")
    before = sorted(p.name for p in (home / "models" / "lenet").iterdir())
    run = _store(
        home,
        "import sys\nimport export.variants as v\n"
        "real = v.to_int8\n"
        "v.to_int8 = lambda src, dst, feeds: real(src, dst, [{k: a * 1000 for k, a in f.items()} for f in feeds])\n"
        f"codes = [v.export_variants('lenet', ('int8',), runs={str(tmp_path)!r}),\n"
        f"         v.export_variants('lenet', ('fp16',), runs={str(tmp_path)!r},\n"
        "                           gates={**v.GATES, 'classify': v.Gate('accuracy', -0.5, 'points')})]\n"
        "print(codes)\n",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "[1, 1]"
    assert "export: lenet int8: variant gate FAILED, not stored: accuracy" in run.stderr
    assert "top-1 agreement with fp32" in run.stderr
    assert "export: lenet fp16: variant gate FAILED, not stored: accuracy" in run.stderr and "-50 points" in run.stderr
    assert sorted(p.name for p in (home / "models" / "lenet").iterdir()) == before  # nothing stored
    assert len(list(tmp_path.glob("export/lenet/variants/*/gate.json"))) == 2  # the records, for a person


@pytest.mark.parametrize("argv, message", [(["vae"], "no variant gate"), (["lenet", "--precisions", "int4"], "int4")])
def test_what_cannot_have_variants_is_refused_in_one_line(argv: list[str], message: str):
    run = subprocess.run(
        [sys.executable, "-m", "export.variants", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr


def test_gates_are_stated_in_code_as_the_docs_say():
    assert GATES["classify"] == Gate("accuracy", 0.005, "points", 0.99)
    assert GATES["segment"] == Gate("mean_iou", 0.01, "points", 0.99)
    assert GATES["denoise"].margin == 0.5 and GATES["denoise"].unit == "dB"
