"""Serving FP16 and INT8 variants (export/variants.py): EE559_PRECISION read and checked, the
catalog resolving a request's `precision` among the served versions, and a real server that serves
fp32 by default though an INT8 variant is the newest stored version, and the variant when a
request asks for it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import requests

from core.card import ModelCard, TensorSpec
from service.catalog import Catalog
from service.errors import ClientError
from service.settings import Settings, SettingsError

from ..conftest import serving


def _card(version: str, precision: str = "fp32", name: str = "lenet", tasks: tuple[str, ...] = ("classify",)):
    spec = TensorSpec("x", ("batch_size", 4), "float32")
    card = ModelCard(name, version, tasks, "m.onnx", "0" * 64, 18, (spec,), (spec,), 8, ())
    return replace(card, precision=precision, variant={"of": "f1"} if precision != "fp32" else {})


def test_ee559_precision_is_a_list_of_precisions_the_first_the_default():
    assert Settings.from_env({}).precision == ("fp32",)
    assert Settings.from_env({"EE559_PRECISION": " INT8, fp32 "}).precision == ("int8", "fp32")
    for bad in ("int4", "fp32,fp32", "fp16;int8"):
        with pytest.raises(SettingsError, match=r"EE559_PRECISION.*accepted: one or more of fp32, fp16, int8"):
            Settings.from_env({"EE559_PRECISION": bad})


def test_a_request_names_a_precision_and_gets_the_first_served_version_of_it():
    c = Catalog({card.tag: card for card in (_card("i8", "int8"), _card("f1"), _card("h2", "fp16"), _card("g0"))})
    assert c.for_task("lenet", "classify").version == "i8"  # the default: the first listed
    assert c.for_task("lenet", "classify", precision="fp32").version == "f1"
    assert c.for_task("lenet", "classify", precision="fp16").version == "h2"
    assert c.for_task("lenet", "classify", "g0", "fp32").version == "g0"
    with pytest.raises(ClientError) as err:
        c.for_task("lenet", "classify", "i8", "fp16")  # that version is not of that precision
    assert err.value.status == 404 and "in precision fp16" in err.value.message and "h2" in err.value.message


@pytest.mark.parametrize(
    "precision, status, said",
    [
        ("fp16", 404, "'precision' served for it on /classify: int8, fp32"),
        ("int4", 400, "'precision' must be one of fp32, fp16, int8, got 'int4'"),
        (16, 400, "'precision' must be one of"),
        (["int8"], 400, "a JSON array of 1 item(s)"),
        ("x" * 5000, 400, "'precision' must be one of"),
    ],
)
def test_a_precision_not_served_or_not_a_precision_is_a_client_error_naming_the_field(precision, status, said):
    c = Catalog({card.tag: card for card in (_card("i8", "int8"), _card("f1"))})
    with pytest.raises(ClientError) as err:
        c.for_task("lenet", "classify", precision=precision)
    assert err.value.status == status and said in err.value.message and len(err.value.message) < 300


def test_a_served_variant_on_a_real_server(variant_home, runs):
    """EE559_MODELS=lenet: the fp32 version, though the INT8 variant is the newest stored; the
    variant pinned beside it is served to requests that ask for its precision, and listed with
    its precision and gate."""
    home, cards, _ = variant_home
    fp32, int8 = cards["fp32"]["version"], cards["int8"]["version"]
    image = cards["fp32"]["examples"]["inputs"][0]  # a held-out digit
    env = {"EE559_MODELS": f"lenet,lenet:{int8}", "EE559_WORKERS": "1"}
    with serving(env, runs / "variants.log", home=home) as url:

        def classify(**extra) -> requests.Response:
            return requests.post(f"{url}/classify", json={"model": "lenet", "image": image, **extra}, timeout=10)

        assert classify().json()["version"] == fp32
        assert classify(precision="int8").json()["version"] == int8
        assert classify(precision="fp32").json()["version"] == fp32
        missing = classify(precision="fp16")
        assert (
            missing.status_code == 404
            and "'precision' served for it on /classify: fp32, int8" in missing.json()["error"]
        )
        bad = classify(precision="half")
        assert bad.status_code == 400 and "fp32, fp16, int8" in bad.json()["error"]
        listed = {m["version"]: m for m in requests.get(f"{url}/models", timeout=10).json()["models"]}
        assert listed[fp32]["precision"] == "fp32" and listed[fp32]["default"] and listed[fp32]["variant"] == {}
        assert listed[int8]["precision"] == "int8" and listed[int8]["variant"]["of"] == fp32
        assert listed[int8]["variant"]["gate"]["passed"] and not listed[int8]["default"]
