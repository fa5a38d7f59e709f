"""`make gpu-check` (loadtests/gpu_check.py) and the topology comparison (loadtests/topology.py).
The default suite checks the pieces: a step's failure recorded and the next steps run, steps
skipped past the budget, the exporter's output read, every task route and v2 model called and
checked on the session's server, the load generator and the /metrics reading. The slow test runs
the whole CPU dry run end to end (`make gpu-check-test`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from loadtests import gpu_check, topology
from loadtests.gpu_check import FAILED, OK, SKIPPED, Check, Step


def _served_providers() -> set[str]:
    """The test servers run on the CPU wherever CUDA cannot be used (tests/service/conftest.py)."""
    from core.session import CPU, cuda_unavailable_reason

    if cuda_unavailable_reason() is not None:
        return {CPU}
    pytest.skip("CUDA may run here: the provider the test server got is not known to this test")


def _check(tmp_path: Path, budget: float = 60.0, device: str = "cpu") -> Check:
    return Check(device, tmp_path / "out", tmp_path / "runs", quick=True, budget=budget)


def test_a_failing_step_is_recorded_and_the_next_ones_still_run(tmp_path: Path):
    check = _check(tmp_path)

    def broken(check: Check, step: Step) -> None:
        raise RuntimeError("the CUDA provider did not initialise")

    def fine(check: Check, step: Step) -> None:
        step.summary = "done"

    assert check.run("first", broken, 0).status == FAILED
    assert check.run("second", fine, 0).status == OK
    first = check.steps[0]
    assert first.summary == "RuntimeError: the CUDA provider did not initialise"
    assert "Traceback" in first.details["traceback"]
    table = gpu_check.markdown(check, 1.0)
    assert "| first | failed |" in table and "| second | ok |" in table


def test_a_step_that_cannot_fit_in_the_budget_is_skipped_and_says_so(tmp_path: Path):
    check = _check(tmp_path, budget=5.0)
    ran = []
    step = check.run("topology", lambda c, s: ran.append(1), 60)
    assert step.status == SKIPPED and "out of time" in step.summary and ran == []


def test_the_fp16_step_runs_the_gates_on_the_device_and_reads_what_was_stored(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(gpu_check, "ROOT", tmp_path)  # no loadtests/variantbench.py there: gates only
    check = _check(tmp_path, device="cuda")
    seen: list[list[str]] = []
    answers = {
        "export.variants all": (0, "lenet fp16: saved lenet:abc (x.onnx)\nunet fp16: saved unet:def (y.onnx)\n"),
    }

    def command(self, name, argv, timeout):
        seen.append(argv)
        rc, out = next(v for k, v in answers.items() if " ".join(argv[2:]).startswith(k))
        return subprocess.CompletedProcess(argv, rc, out, "gate missed" if rc else "")

    monkeypatch.setattr(Check, "command", command)
    step = check.run("fp16", gpu_check.fp16, 0)
    assert seen[-1][2:] == ["export.variants", "all", "--precisions", "fp16", "--provider", "cuda"]
    assert step.status == OK and step.details["saved"] == ["lenet:abc", "unet:def"]
    answers["export.variants all"] = (1, "resnet fp16: accuracy 0.91 < 0.97 - 0.005: not stored")
    assert check.run("fp16", gpu_check.fp16, 0).status == FAILED


def test_the_export_step_reads_every_gate_and_a_failure(tmp_path: Path, monkeypatch):
    check = _check(tmp_path, device="cuda")
    seen = []
    printed = (
        "lenet: parity OK on CUDAExecutionProvider at batch sizes 1, 7, 64 (max abs error 2.38e-07 <= 0.0001); "
        "golden inputs reproduced; accuracy 0.9780; saved x\n"
        "unet: parity OK at batch sizes 1, 7, 64 (max abs error 1.10e-06 <= 0.001); miou 0.9; saved y\n"
    )

    def command(name, argv, timeout, rc=0, err=""):
        seen.append(argv)
        return subprocess.CompletedProcess(argv, rc, printed, err)

    monkeypatch.setattr(Check, "command", lambda self, name, argv, timeout: command(name, argv, timeout))
    step = check.run("export", gpu_check.export, 0)
    assert seen[0][-6:] == ["export", "all", "--provider", "cuda", "--variants", "none"]
    assert step.status == OK and step.details["gates"] == [
        {
            "graph": "lenet",
            "provider": "CUDAExecutionProvider",
            "batches": "1, 7, 64",
            "max_abs_error": 2.38e-07,
            "tolerance": 0.0001,
        },
        {"graph": "unet", "provider": None, "batches": "1, 7, 64", "max_abs_error": 1.10e-06, "tolerance": 0.001},
    ]
    printed = printed.replace("on CUDAExecutionProvider", "on CPUExecutionProvider")  # CUDA silently not used
    step = check.run("export", gpu_check.export, 0)
    assert step.status == FAILED and step.summary == "lenet ran on CPUExecutionProvider"
    gate = "export: parity gate FAILED: resnet: output logits at batch 64: max abs error 3e-02 > 1e-04"
    monkeypatch.setattr(
        Check, "command", lambda self, name, argv, timeout: command(name, argv, timeout, rc=1, err=gate)
    )
    step = check.run("export", gpu_check.export, 0)
    assert step.status == FAILED and step.summary.startswith("resnet: output logits at batch 64")


def test_every_task_route_and_v2_model_is_called_and_checked(server: str):
    calls, providers = gpu_check.call_every_task(server)
    assert {c["route"] for c in calls} >= set(gpu_check.ROUTES)
    assert [c for c in calls if not c["ok"]] == []
    assert providers == _served_providers()  # what the answers name
    v2 = gpu_check.call_v2(server)
    assert {r["model"] for r in v2} >= {"lenet", "resnet", "unet", "vae_decoder", "dcgan"}
    assert [r for r in v2 if not r["ok"]] == []


def test_a_failed_answer_is_reported_by_the_load_tests_own_check(server: str):
    """The adapter hands Locust's failure() through: a classification answer that is not one fails."""
    from loadtests.tasks import check_classification

    client = gpu_check._Client(server)
    answer = client.post("/models", name="not a classification")  # 405: a GET route
    check_classification(answer, 3, 10, {"answered": 0, "correct": 0})
    assert not answer.passed and answer.problem and answer.problem.startswith("HTTP 405")


def test_the_load_generator_and_the_metrics_reading(server: str):
    port = int(server.rsplit(":", 1)[1])
    body = topology.body_for("lenet")
    before = topology.scrape(port)
    run = topology.load(port, topology.http_request("/classify", body, {"Content-Type": "application/json"}), 2, 1, 1)
    after = topology.scrape(port)
    assert run["requests"] > 0 and run["errors"] == 0 and run["p99_ms"] >= run["p50_ms"] > 0
    count = "ee559_inference_batch_size_count"
    grew = (topology.metric(after, count, model="lenet") or 0) - (topology.metric(before, count, model="lenet") or 0)
    assert grew >= 1  # batches of the requests just sent; several requests may share one
    assert topology.providers(after, "lenet") == _served_providers()


def test_metric_sums_matching_samples_and_says_none_when_absent():
    samples = [
        ("ee559_gpu_memory_used_bytes", {"gpu": "0", "name": "A"}, 3.0),
        ("ee559_gpu_memory_used_bytes", {"gpu": "1", "name": "B"}, 4.0),
        ("ee559_inference_batch_size_sum", {"model": "lenet"}, 10.0),
    ]
    assert topology.metric(samples, "ee559_gpu_memory_used_bytes") == 7.0
    assert topology.metric(samples, "ee559_gpu_memory_used_bytes", gpu="1") == 4.0
    assert topology.metric(samples, "ee559_inference_batch_size_sum", model="unet") is None


@pytest.mark.slow
def test_the_cpu_dry_run_runs_every_step_end_to_end(exported, runs: Path, tmp_path: Path):
    """`make gpu-check DEVICE=cpu`: the same steps as on a GPU, on the CPU provider, against a copy
    of the session's runs (the export step writes new versions into its store)."""
    copy = tmp_path / "runs"
    shutil.copytree(runs / "train", copy / "train")
    shutil.copytree(runs / "bentoml" / "models", copy / "bentoml" / "models")
    if (runs / "cache").exists():
        shutil.copytree(runs / "cache", copy / "cache")
    out = tmp_path / "out"
    assert gpu_check.main(["--device", "cpu", "--quick", "--runs", str(copy), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.json", "gpu-check.md", "logs.tar.gz"]
    report = json.loads((out / "gpu-check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["environment", "export", "serve", "bench", "topology", "fp16"]
    assert report["ok"] and all(s["status"] == OK for s in steps.values())
    helptext = subprocess.run(
        [gpu_check.sys.executable, "-m", "export", "--help"], capture_output=True, text=True, cwd=gpu_check.ROOT
    ).stdout
    assert (steps["export"]["status"] == OK) == ("--provider" in helptext)
    assert (steps["fp16"]["status"] == OK) == (gpu_check.ROOT / "export" / "variants.py").exists()
    serve = steps["serve"]["details"]
    assert set(serve["routes"]) >= set(gpu_check.ROUTES) and serve["providers"] == ["CPUExecutionProvider"]
    assert serve["readyz"] == 200 and all(c["ok"] for c in serve["calls"]) and all(r["ok"] for r in serve["v2"])
    bench = steps["bench"]["details"]
    assert {(c["model"], c["batch"]) for c in bench["cells"]} == {
        (m, b) for m in ("lenet", "resnet", "unet") for b in (1, 8)
    }
    results = {r["topology"]: r for r in steps["topology"]["details"]["results"]}
    assert set(results) == {"ee559", "bentoml"}
    for r in results.values():
        assert r["requests"] > 0 and r["errors"] == 0 and r["mean_batch"] >= 1
        assert r["provider"] == "CPUExecutionProvider" and r["gpu_memory_used_bytes"] is None
    table = (out / "gpu-check.md").read_text()
    assert "| serve | ok |" in table and "| ee559 | resnet |" in table and "| lenet | 8 |" in table
