"""`python -m training resnet --ablate`: every variant trained on a tiny preset, one table row and one
curve each, no checkpoint written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from training.ablation import PLOT, RESULTS, TABLE, Outcome, curves
from training.registry import REGISTRY

ABLATABLE = [n for n, e in REGISTRY.items() if e.ablations]


def test_resnet_has_the_chapters_variants():
    variants = REGISTRY["resnet"].ablations
    assert next(iter(variants.values())) == {}, "the full model comes first, as the reference"
    keys = {k for overrides in variants.values() for k in overrides}
    assert {"batch_norm", "skip", "dropout", "init"} <= keys
    assert REGISTRY["resnet"].build().cfg.dropout > 0, "the served ResNet has dropout to ablate"
    for overrides in variants.values():  # every variant builds with its overrides
        model = REGISTRY["resnet"].build(overrides)
        assert all(getattr(model.cfg, k) == v for k, v in overrides.items())


@pytest.mark.parametrize("name", ABLATABLE)
def test_ablation_cli_writes_a_table_and_curves_per_variant(name: str, tmp_path: Path, capsys):
    from training.__main__ import main

    # The quick preset (256 training images), 2 epochs: seconds; "scenes" is what the ResNet's
    # variants are compared on (docs/models.md).
    args = [name, "--ablate", "--dataset", "scenes", "--preset", "quick", "--epochs", "2", "--out", str(tmp_path)]
    assert main([*args, "--precision", "fp32"]) == 0
    printed = capsys.readouterr().out
    (run_dir,) = (tmp_path / "ablation" / name).iterdir()
    assert str(run_dir / TABLE) in printed and str(run_dir / PLOT) in printed
    variants = list(REGISTRY[name].ablations)

    rows = [line for line in (run_dir / TABLE).read_text().splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == variants

    results = json.loads((run_dir / RESULTS).read_text())
    assert results["train"]["precision"] == "fp32" and results["caption"].endswith("trained in fp32")
    outcomes = [Outcome(**v) for v in results["variants"]]
    assert [o.variant for o in outcomes] == variants
    lines = curves(outcomes, "val_accuracy")
    assert [line.label for line in lines] == variants and all(len(line.points) == 2 for line in lines)
    assert len({line.colour for line in lines}) == len(variants)
    for o, row in zip(outcomes, rows, strict=True):  # the table says what the runs measured
        assert f"{o.history[-1]['val_accuracy']:.2%}" in row and 0.0 <= o.test_accuracy <= 1.0

    with Image.open(run_dir / PLOT) as png:
        assert png.format == "PNG" and png.width > png.height  # two panels side by side
        colours = {c for _, c in png.convert("RGB").getcolors(1 << 20)}
    assert {line.colour for line in lines} <= colours
    assert not (tmp_path / "train").exists(), "ablation variants are never saved as checkpoints"


def test_ablate_refuses_a_model_without_variants(capsys):
    from training.__main__ import main

    plain = next(n for n, e in REGISTRY.items() if not e.ablations)
    with pytest.raises(SystemExit):
        main([plain, "--ablate", "--preset", "quick"])
    assert "no ablation variants" in capsys.readouterr().err


def test_ablate_trains_the_ablation_preset_unless_told_and_plain_training_the_full_one(monkeypatch, tmp_path: Path):
    import training.ablation
    import training.train
    from training.__main__ import main

    seen: list[tuple[str, str]] = []

    def record(kind: str, preset: str) -> Path:
        seen.append((kind, preset))
        (tmp_path / TABLE).write_text("table\n")
        return tmp_path

    monkeypatch.setattr(training.ablation, "run_ablation", lambda entry, dataset, preset, *a: record("ablate", preset))
    monkeypatch.setattr(training.train, "train_model", lambda entry, **kw: record("train", kw["preset"]))
    assert main(["resnet", "--ablate"]) == 0
    assert main(["resnet", "--ablate", "--preset", "quick"]) == 0
    assert main(["resnet"]) == 0
    assert seen == [("ablate", "ablation"), ("ablate", "quick"), ("train", "full")]
    with pytest.raises(SystemExit):  # a preset the model does not have is refused, naming its own
        main(["lenet", "--preset", "ablation"])
