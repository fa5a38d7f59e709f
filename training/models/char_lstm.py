"""Character-level LSTM language model (course chapter: recurrent models and NLP), after
pytorch/examples' word_language_model. Exported as a step graph with the state as explicit
inputs and outputs, (tokens, h, c) -> (logits, h, c): a prompt is consumed in one call, then
generation goes on one token per call."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class CharLSTMConfig:
    num_classes: int = 128  # the vocabulary size (the dataset's number of classes)
    embed: int = 64
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.1


class CharLSTM(nn.Module):
    def __init__(self, cfg: CharLSTMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.num_classes, cfg.embed)
        self.lstm = nn.LSTM(cfg.embed, cfg.hidden, cfg.layers, batch_first=True, dropout=cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden, cfg.num_classes)

    def initial_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.cfg.layers, batch, self.cfg.hidden)
        return torch.zeros(shape), torch.zeros(shape)

    def forward(
        self, tokens: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens (B, T) int64, h and c (layers, B, hidden) -> logits (B, T, vocab), h, c."""
        y, (h, c) = self.lstm(self.embed(tokens), (h, c))  # (B, T, hidden)
        return self.head(self.drop(y)), h, c

    def step_inputs(self, tokens: torch.Tensor, past: int) -> tuple[torch.Tensor, ...]:
        """The step graph's inputs for tokens[:, past:], with the real state after tokens[:, :past]."""
        h, c = self.initial_state(len(tokens))
        if past:
            _, h, c = self(tokens[:, :past], h, c)
        return tokens[:, past:], h, c

    def sequence_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """The uncached reference: whole sequences from the initial state."""
        return self(tokens, *self.initial_state(len(tokens)))[0]

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, _, _ = self(x, *(s.to(x.device) for s in self.initial_state(len(x))))
        return nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())

    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Sums over the batch of each window's mean loss in nats per character."""
        logits, _, _ = self(x, *(s.to(x.device) for s in self.initial_state(len(x))))
        nats = nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)
        return {
            "loss": nats.sum().item(),
            "nats_per_char": nats.sum().item(),
            "bits_per_char": (nats / torch.log(torch.tensor(2.0))).sum().item(),
        }
