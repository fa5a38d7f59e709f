"""Text generation with exported step graphs (numpy only): the state a graph carries between
steps, batching the steps of several sequences, and sampling.

The model card's "generation" section says how the state works:

- "recurrent" (the LSTM): fixed-size state tensors, concatenated along the batch axis.
- "kv" (the GPT): key/value caches that grow by one slot per token. Sequences of different
  lengths share a step by left padding: each cache is padded to the longest with slots that
  `past_mask` marks 0, and `positions` gives each token's index in its own sequence. A cache
  full at `context` tokens restarts from the last context/2 tokens (one prompt-sized step), so
  positions never leave the range the model was trained on.

`TextModel.step` is the only place that runs a graph; the service's scheduler (service/scheduler.py),
the exporter's decoding parity check (export/text_parity.py) and the text benchmark go through it,
and `window_start` is the one statement of the window rule (the uncached PyTorch references use it).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

import numpy as np

from .card import Generation, ModelCard, TensorSpec

StepRunner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def window_start(length: int, start: int, context: int | None) -> int:
    """The first token a cache holds once a sequence is `length` tokens long, if it held
    tokens[start:] so far: a cache that would pass `context` tokens restarts from the last
    context/2 (one prompt-sized step), so positions never leave the range the model was trained on."""
    if context is not None and length - start > context:
        return length - context // 2
    return start


@dataclass(eq=False)  # compared by identity (its state holds arrays)
class Sequence:
    tokens: list[int]  # the prompt and everything generated so far
    state: dict[str, np.ndarray] = field(default_factory=dict)  # graph input name -> batch of one
    fed: int = 0  # tokens[:fed] are in the state
    start: int = 0  # kv: the cache holds tokens[start:fed]

    @property
    def pending(self) -> int:
        return len(self.tokens) - self.fed


class TextModel:
    """One text step graph: `run(feeds) -> outputs` (both name -> array) does the work."""

    def __init__(self, generation: Generation, vocab: Seq[str], inputs: Seq[TensorSpec], run: StepRunner) -> None:
        self.generation, self.run = generation, run
        self.kind = generation.cache
        self.state_io = generation.state  # input -> output
        self.batch_axis = generation.batch_axis
        if self.kind == "kv" and (
            generation.length_axis is None or not generation.positions or not generation.past_mask
        ):
            raise ValueError("a kv cache needs length_axis, positions and past_mask in its generation settings")
        self.length_axis: int = generation.length_axis if generation.length_axis is not None else -1  # kv only
        if generation.context is not None and not isinstance(generation.context, int):
            raise ValueError(f"unresolved context {generation.context!r}: resolve the export spec first")
        self.context: int | None = generation.context
        self.vocab = list(vocab)
        self.index = {ch: i for i, ch in enumerate(self.vocab)}
        self.shapes = {t.name: t.shape for t in inputs}
        self.dtypes = {t.name: t.dtype for t in inputs}

    @classmethod
    def from_card(cls, card: ModelCard, run: StepRunner) -> TextModel:
        if card.generation is None:
            raise ValueError(f"{card.name} is not a text model")
        return cls(card.generation, card.labels, card.inputs, run)

    def new(self, tokens: list[int]) -> Sequence:
        """A sequence to continue `tokens`; with a context, a longer prompt is cut from the left."""
        seq = Sequence(list(tokens))
        over = len(tokens) - self.context if self.context is not None else 0
        self._reset(seq, max(over, 0))
        return seq

    def _reset(self, seq: Sequence, start: int) -> None:
        """An empty state (zeros, or caches of length 0) before tokens[start]."""
        for name in self.state_io:
            shape = [
                1 if i == self.batch_axis else 0 if isinstance(d, str) else d for i, d in enumerate(self.shapes[name])
            ]
            seq.state[name] = np.zeros(shape, dtype=self.dtypes[name])
        seq.fed = seq.start = start

    def _slide(self, seq: Sequence) -> None:
        """kv: a cache that would pass `context` tokens restarts (window_start)."""
        start = window_start(len(seq.tokens), seq.start, self.context)
        if start != seq.start:
            self._reset(seq, start)

    def step(self, seqs: list[Sequence]) -> np.ndarray:
        """Feed every sequence its pending tokens; return the logits after each one's last token,
        (len(seqs), vocab). Sequences with the same number of pending tokens (all of them, in a
        decode step) share one graph call."""
        for s in seqs:
            self._slide(s)
        logits: list[np.ndarray | None] = [None] * len(seqs)
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(seqs):
            groups.setdefault(s.pending, []).append(i)
        for t, idx in groups.items():
            if t < 1:
                raise ValueError("a sequence without pending tokens cannot step")
            rows = self._step([seqs[i] for i in idx], t)
            for j, i in enumerate(idx):
                logits[i] = rows[j]
        return np.stack([row for row in logits if row is not None])

    def _step(self, seqs: list[Sequence], t: int) -> np.ndarray:
        feeds = {"tokens": np.array([s.tokens[s.fed :] for s in seqs], dtype=np.int64)}
        pasts = [s.fed - s.start for s in seqs]
        longest = max(pasts)
        if self.kind == "kv":
            gen = self.generation
            assert gen.past_mask and gen.positions  # checked in __init__
            feeds[gen.past_mask] = np.array([[0] * (longest - p) + [1] * p for p in pasts], dtype=np.int64).reshape(
                len(seqs), longest
            )
            feeds[gen.positions] = np.array([np.arange(p, p + t) for p in pasts], dtype=np.int64)
            for name in self.state_io:
                feeds[name] = np.concatenate([self._left_pad(s.state[name], longest) for s in seqs], self.batch_axis)
        else:
            for name in self.state_io:
                feeds[name] = np.concatenate([s.state[name] for s in seqs], self.batch_axis)
        outs = self.run(feeds)
        for i, s in enumerate(seqs):
            for name, out in self.state_io.items():
                row = np.take(outs[out], [i], axis=self.batch_axis)
                if self.kind == "kv":  # drop this row's left padding
                    keep = np.arange(longest - pasts[i], row.shape[self.length_axis])
                    row = np.take(row, keep, axis=self.length_axis)
                s.state[name] = row
            s.fed += t
        return outs["logits"][:, -1]

    def _left_pad(self, cache: np.ndarray, length: int) -> np.ndarray:
        missing = length - cache.shape[self.length_axis]
        if not missing:
            return cache
        widths = [(0, 0)] * cache.ndim
        widths[self.length_axis] = (missing, 0)
        return np.pad(cache, widths)

    def encode(self, text: str) -> list[int]:
        """Token ids; KeyError names the first character outside the vocabulary."""
        return [self.index[ch] for ch in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids)


def choose(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
    """The next token: greedy for top_k == 1, else sampled from the top_k most likely at `temperature`."""
    if top_k == 1:
        return int(np.argmax(logits))
    z = logits.astype(np.float64)
    # Shift before dividing: a tiny temperature (5e-324 is a valid float) then sends every other
    # logit to -inf instead of making inf - inf = nan.
    with np.errstate(over="ignore"):
        z = (z - z.max()) / temperature
    if top_k < len(z):
        z[np.argpartition(z, -top_k)[:-top_k]] = -np.inf
    p = np.exp(z)
    return int(rng.choice(len(p), p=p / p.sum()))


def greedy(model: TextModel, prompts: list[list[int]], new_tokens: int, batched: bool) -> list[list[int]]:
    """Greedy decoding of `new_tokens` after each prompt: prompts fed one by one, then the decode
    steps of all sequences batched together (batched=True) or each sequence alone."""
    seqs = [model.new(p) for p in prompts]
    last = np.concatenate([model.step([s]) for s in seqs])
    for k in range(new_tokens):
        for s, row in zip(seqs, last):
            s.tokens.append(int(np.argmax(row)))
        if k + 1 < new_tokens:
            last = model.step(seqs) if batched else np.concatenate([model.step([s]) for s in seqs])
    return [s.tokens[len(p) :] for s, p in zip(seqs, prompts)]
