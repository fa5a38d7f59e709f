"""Text corpora and the language models' incremental passes: the cached token-by-token pass and
left-padded batches equal the full forward pass (Fleuret's mygpt.py check), and the service's
state handling (service/textgen.py) decodes the same tokens batched, unbatched and uncached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.textgen import choose, greedy
from export.text_parity import torch_text_model, uncached_greedy
from training.data import load_dataset
from training.models.char_lstm import CharLSTM, CharLSTMConfig
from training.models.gpt import GPT, GPTConfig
from training.text import corpus_text, stdlib_docstrings


def test_stdlib_docstrings_are_a_real_corpus_and_cached(runs: Path):
    text, source = corpus_text()
    assert len(text) > 500_000 and "Return the" in text and "standard library" in source
    cached = list((runs / "cache").glob("stdlib_docstrings_*.txt"))
    assert len(cached) == 1 and cached[0].read_text(encoding="utf-8") == text
    assert corpus_text()[0] == text  # read back from the cache


def test_stdlib_extraction_is_deterministic():
    assert stdlib_docstrings()[:20_000] == stdlib_docstrings()[:20_000]


def test_corpus_file_loader(tmp_path: Path):
    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    splits = load_dataset("text", 0, path)
    assert splits.labels == tuple(sorted(set(path.read_text())))
    assert splits.train.x.shape[1] == 128 and (splits.train.x[:, 1:] == splits.train.y[:, :-1]).all()
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 ".encode("latin-1") * 500)
    with pytest.raises(ValueError, match="not UTF-8"):
        load_dataset("text", 0, bad)
    short = tmp_path / "short.txt"
    short.write_text("too short", encoding="utf-8")
    with pytest.raises(ValueError, match="at least"):
        load_dataset("text", 0, short)
    with pytest.raises(ValueError, match="--corpus"):
        load_dataset("text", 0, None)


def _gpt(block: int = 128) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(num_classes=30, block=block, layers=2, heads=2, dim=32, dropout=0.0)).eval()


@torch.no_grad()
def test_gpt_cached_token_by_token_pass_equals_full_pass():
    model = _gpt()
    tokens = torch.randint(0, 30, (3, 40))
    full = model.full_forward(tokens)
    keys, values = model.empty_cache(3)
    mask = torch.zeros(3, 0, dtype=torch.int64)
    steps = []
    for t in range(40):
        logits, keys, values = model(tokens[:, t : t + 1], torch.full((3, 1), t), mask, keys, values)
        mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.int64)], 1)
        steps.append(logits)
    assert keys.shape == (2, 3, 2, 40, 16)
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-5


@torch.no_grad()
def test_gpt_left_padded_batch_equals_each_sequence_alone():
    model = _gpt()
    short, long = torch.randint(0, 30, (1, 5)), torch.randint(0, 30, (1, 12))
    inputs = [model.step_inputs(t, t.shape[1] - 1) for t in (short, long)]  # one pending token each
    alone = [model(*i)[0][:, -1] for i in inputs]
    pad = 11 - 4
    keys = torch.cat([torch.nn.functional.pad(inputs[0][3], (0, 0, pad, 0)), inputs[1][3]], 1)
    values = torch.cat([torch.nn.functional.pad(inputs[0][4], (0, 0, pad, 0)), inputs[1][4]], 1)
    mask = torch.cat([torch.cat([torch.zeros(1, pad, dtype=torch.int64), inputs[0][2]], 1), inputs[1][2]])
    batched = model(
        torch.cat([inputs[0][0], inputs[1][0]]), torch.cat([inputs[0][1], inputs[1][1]]), mask, keys, values
    )[0][:, -1]
    assert (batched - torch.cat(alone)).abs().max() < 1e-5


@torch.no_grad()
def test_lstm_step_by_step_equals_full_pass():
    torch.manual_seed(0)
    model = CharLSTM(CharLSTMConfig(num_classes=30, embed=8, hidden=16, layers=2, dropout=0.0)).eval()
    tokens = torch.randint(0, 30, (2, 25))
    full = model.sequence_logits(tokens)
    inputs = model.step_inputs(tokens, 10)
    rest, _, _ = model(*inputs)
    assert (rest - full[:, 10:]).abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["gpt", "lstm"])
def test_service_decoding_equals_uncached_reference_even_past_the_context(kind: str):
    from training.registry import get

    labels = [chr(65 + i) for i in range(30)]
    if kind == "gpt":
        model, cfg = _gpt(block=24), {"num_classes": 30, "block": 24, "layers": 2, "heads": 2, "dim": 32}
    else:
        torch.manual_seed(0)
        cfg = {"num_classes": 30, "embed": 8, "hidden": 16, "layers": 2}
        model = CharLSTM(CharLSTMConfig(**cfg, dropout=0.0)).eval()
    spec = get("gpt" if kind == "gpt" else "char_lstm").export.resolve(cfg)
    tm = torch_text_model(model, spec, labels)
    prompts = [list(np.random.default_rng(i).integers(0, 30, n)) for i, n in enumerate((3, 7, 11))]
    ref = [uncached_greedy(model, p, 40, spec.generation.context) for p in prompts]  # 11 + 40 > 2 * 24
    assert greedy(tm, prompts, 40, batched=True) == ref
    assert greedy(tm, prompts, 40, batched=False) == ref


def test_sampling_is_seeded_and_respects_top_k():
    logits = np.array([0.0, 1.0, 2.0, 3.0, -1.0], dtype=np.float32)
    draws = [choose(logits, 1.0, 2, np.random.default_rng(7)) for _ in range(3)]
    assert len(set(draws)) == 1  # same seed, same token
    many = {choose(logits, 1.0, 2, np.random.default_rng(s)) for s in range(200)}
    assert many == {2, 3}
    assert choose(logits, 0.5, 1, np.random.default_rng(0)) == 3


@pytest.mark.parametrize("temperature", [5e-324, 1e-30, 10.0])
def test_sampling_at_extreme_temperatures_gives_a_token(temperature: float):
    """Found by schemathesis: the smallest positive float as temperature made every logit inf and
    the probabilities nan (a 500). Near zero it is greedy; ties share the draw."""
    logits = np.array([0.0, 3.0, 2.0, 3.0, -1.0], dtype=np.float32)
    draws = {choose(logits, temperature, 3, np.random.default_rng(s)) for s in range(50)}
    assert draws <= ({1, 3} if temperature < 1 else {1, 2, 3}) and draws
