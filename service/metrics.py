"""Prometheus metrics, defined once. They live in BentoML's registry (multi-process aware), so
/metrics shows them beside BentoML's own. Labels are model and provider, never request data."""

from __future__ import annotations

from functools import cache

import bentoml

PREFIX = "ee559"


@cache
def inference_seconds():
    return bentoml.metrics.Histogram(
        name=f"{PREFIX}_inference_duration_seconds",
        documentation="ONNX Runtime time per executed batch.",
        labelnames=["model", "provider"],
        buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    )


@cache
def batch_size():
    return bentoml.metrics.Histogram(
        name=f"{PREFIX}_inference_batch_size",
        documentation="Number of inputs per executed ONNX Runtime batch.",
        labelnames=["model"],
        buckets=(1, 2, 4, 8, 16, 32, 64, 128),
    )


@cache
def rejected_requests():
    return bentoml.metrics.Counter(
        name=f"{PREFIX}_rejected_requests_total",
        documentation="Requests answered with a client error, by reason.",
        labelnames=["reason"],
    )


@cache
def model_info():
    return bentoml.metrics.Gauge(
        name=f"{PREFIX}_model_info",
        documentation="Served models (value 1), with their version, opset and execution provider.",
        labelnames=["model", "version", "opset", "provider"],
        multiprocess_mode="max",
    )
