"""The service's settings: read once from EE559_* variables, each checked with a message naming it."""

from __future__ import annotations

import pytest

from service.settings import Settings, SettingsError


def test_defaults_when_nothing_is_set():
    s = Settings.from_env({})
    assert s == Settings()
    assert s.workers == "cpu_count"  # BentoML's cgroup-aware count
    assert s.models is None and s.provider == "auto" and s.batcher == "ee559"


def test_values_are_read_and_converted():
    s = Settings.from_env(
        {
            "EE559_MODELS": " lenet, mlp ,",
            "EE559_WORKERS": "3",
            "EE559_PROVIDER": "CPU",
            "EE559_MAX_BODY_BYTES": "1024",
            "EE559_BODY_TIMEOUT_S": "2.5",
            "EE559_API_TOKEN": "s3cret",
            "EE559_AUTH_PROBES": "1",
        }
    )
    assert s.models == ("lenet", "mlp") and s.workers == 3 and s.provider == "cpu"
    assert s.max_body_bytes == 1024 and s.body_timeout_s == 2.5 and s.api_token == "s3cret" and s.auth_probes


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EE559_WORKERS", "many"),
        ("EE559_WORKERS", "0"),
        ("EE559_MAX_BATCH_SIZE", "²"),  # a Unicode digit int() refuses
        ("EE559_MAX_QUEUE", "-1"),
        ("EE559_BODY_TIMEOUT_S", "nan"),
        ("EE559_DRAIN_SECONDS", "inf"),
        ("EE559_PROVIDER", "tpu"),
        ("EE559_BATCHER", "triton"),
    ],
)
def test_a_value_that_cannot_be_used_names_its_variable(name: str, value: str):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})
