"""A small character-level GPT (course chapter: attention and transformers), after nanoGPT's
model.py and the incremental pass of F. Fleuret's mygpt.py: each attention layer takes the keys
and values of the tokens before (its cache) and returns them extended by the new tokens, so the
exported step graph is

    (tokens, positions, past_mask, past_keys, past_values) -> (logits, present_keys, present_values)

with a dynamic past length: each generated token costs one short step, not a re-run of the whole
sequence. `past_mask` marks real (1) and padding (0) cache slots, so sequences of different
lengths can share one batched step (left padding); `positions` are each token's index in its
own sequence."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class GPTConfig:
    num_classes: int = 128  # the vocabulary size (the dataset's number of classes)
    block: int = 128  # context: positions 0 .. block-1 (the training windows' length)
    layers: int = 4
    heads: int = 4
    dim: int = 128
    dropout: float = 0.0  # measured: dropout slowed the first epochs; a few epochs do not overfit


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, C); past_k/v (B, H, P, D); mask (B, P + T) bool, True where a key is real."""
        b, t, c = x.shape
        p = past_k.shape[2]
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
        k, v = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)  # (B, H, P + T, D)
        causal = torch.arange(p + t, device=x.device)[None, :] <= torch.arange(t, device=x.device)[:, None] + p
        allowed = causal[None, None] & mask[:, None, None, :]  # (B, 1, T, P + T)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(k.shape[-1])
        att = self.drop(att.masked_fill(~allowed, float("-inf")).softmax(-1))  # each query sees itself: no empty row
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        return self.drop(self.proj(y)), k, v


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.dim, 4 * cfg.dim), nn.GELU(), nn.Linear(4 * cfg.dim, cfg.dim), nn.Dropout(cfg.dropout)
        )

    def forward(self, x, past_k, past_v, mask):
        a, k, v = self.attn(self.ln1(x), past_k, past_v, mask)
        x = x + a
        return x + self.mlp(self.ln2(x)), k, v


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.num_classes, cfg.dim)
        self.pos = nn.Embedding(cfg.block, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def empty_cache(self, batch: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.cfg.layers, batch, self.cfg.heads, 0, self.cfg.dim // self.cfg.heads)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        past_mask: torch.Tensor,
        past_keys: torch.Tensor,
        past_values: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens, positions (B, T) int64; past_mask (B, P) int64; past_keys/values (L, B, H, P, D)
        -> logits (B, T, vocab), present_keys/values (L, B, H, P + T, D)."""
        mask = torch.cat([past_mask.bool(), torch.ones_like(tokens, dtype=torch.bool)], 1)  # (B, P + T)
        x = self.drop(self.tok(tokens) + self.pos(positions))  # (B, T, C)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, past_keys[i], past_values[i], mask)
            keys.append(k)
            values.append(v)
        return self.head(self.ln(x)), torch.stack(keys), torch.stack(values)

    def full_forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The uncached pass over whole sequences (training, and the reference for the cache)."""
        b, t = tokens.shape
        positions = torch.arange(t, device=tokens.device).expand(b, t)
        past_mask = torch.zeros(b, 0, dtype=torch.int64, device=tokens.device)
        return self(tokens, positions, past_mask, *self.empty_cache(b, tokens.device))[0]

    sequence_logits = full_forward  # the uncached reference every model of text offers

    def step_inputs(self, tokens: torch.Tensor, past: int) -> tuple[torch.Tensor, ...]:
        """The step graph's inputs for tokens[:, past:], with the real cache of tokens[:, :past]."""
        b, t = tokens.shape
        keys, values = self.empty_cache(b)
        mask = torch.zeros(b, 0, dtype=torch.int64)
        if past:
            _, keys, values = self(tokens[:, :past], torch.arange(past).expand(b, past), mask, keys, values)
            mask = torch.ones(b, past, dtype=torch.int64)
        return tokens[:, past:], torch.arange(past, t).expand(b, t - past).contiguous(), mask, keys, values

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self.full_forward(x).flatten(0, 1), y.flatten())

    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Sums over the batch of each window's mean loss in nats per character."""
        nats = nn.functional.cross_entropy(self.full_forward(x).transpose(1, 2), y, reduction="none").mean(1)
        return {
            "loss": nats.sum().item(),
            "nats_per_char": nats.sum().item(),
            "bits_per_char": (nats / math.log(2)).sum().item(),
        }
