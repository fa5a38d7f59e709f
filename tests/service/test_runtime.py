"""Execution providers and the service's isolation from torch and the training code."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from core.session import CPU, CUDA, ProviderError, _cuda_driver_present, make_session

needs_no_gpu = pytest.mark.skipif(_cuda_driver_present(), reason="this machine has an NVIDIA driver")


def test_cpu_provider(exported):
    onnx_file = exported["lenet"].with_name("model.onnx")
    sess, provider, why = make_session(onnx_file, "cpu")
    assert provider == CPU and sess.get_providers() == [CPU] and why is None


@needs_no_gpu
def test_auto_falls_back_to_cpu_and_says_why(exported):
    sess, provider, why = make_session(exported["lenet"].with_name("model.onnx"), "auto")
    assert provider == CPU and sess.get_providers()[0] == CPU
    assert why and ("driver" in why or "CUDA" in why)


@needs_no_gpu
def test_cuda_required_fails_without_cuda(exported):
    with pytest.raises(ProviderError, match="CUDA was required"):
        make_session(exported["lenet"].with_name("model.onnx"), "cuda")


def test_unknown_provider_is_refused(exported):
    with pytest.raises(ValueError, match="accepted: auto, cuda, cpu"):
        make_session(exported["lenet"].with_name("model.onnx"), "tpu")


def test_cuda_is_used_when_it_really_works(exported):
    if CUDA not in ort.get_available_providers() or not _cuda_driver_present():
        pytest.skip("no CUDA here")
    _, provider, _ = make_session(exported["lenet"].with_name("model.onnx"), "cuda")
    assert provider == CUDA
