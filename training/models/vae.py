"""Variational auto-encoder (course chapter: generative models), after pytorch/examples' vae with
convolutions: a Gaussian encoder q(z|x), a Bernoulli decoder p(x|z) and a standard normal prior.
Trained on the negative ELBO; reported as the ELBO in nats per image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .common import conv_down, conv_up


@dataclass
class VAEConfig:
    in_channels: int = 1
    latent: int = 16
    # Channels of the first convolution (conv_down, conv_up; the second has twice as many): 64
    # rather than 32 (docs/models.md#evaluation-protocol: LeNet's confidence in the samples).
    width: int = 64
    hidden: int = 256  # the fully connected layer between the convolutions and the latent code
    num_classes: int = 10  # unused by the model; datasets pass it to every registered model


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, w, h = cfg.in_channels, cfg.width, cfg.hidden
        self.encoder = nn.Sequential(
            *conv_down(c, w),
            nn.Flatten(),
            nn.Linear(2 * w * 7 * 7, h),
            nn.ReLU(),
            nn.Linear(h, 2 * cfg.latent),  # (B, 2 * latent): mean and log-variance
        )
        self.decoder = nn.Sequential(
            nn.Linear(cfg.latent, h),
            nn.ReLU(),
            nn.Linear(h, 2 * w * 7 * 7),
            nn.ReLU(),
            nn.Unflatten(1, (2 * w, 7, 7)),
            *conv_up(c, w),  # (B, c, 28, 28) Bernoulli logits
        )

    @classmethod
    def upgrade(cls, config: dict, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
        """A checkpoint written before the width was a setting (2026-11-27) has width 32 (training/
        train.py load_checkpoint)."""
        return {"width": 32, "hidden": 256, **config}, state

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar  # (B, latent) each

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The generator: latent codes (B, latent) -> images (B, c, 28, 28) in [0, 1] (pixel means)."""
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The served reconstruction: decode the posterior mean (deterministic)."""
        mean, logvar = self.encode(x)
        return self.decode(mean), mean, logvar

    def negative_elbo(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """-ELBO per image in nats: reconstruction cross-entropy + KL(q(z|x) || N(0, I))."""
        mean, logvar = self.encode(x)
        eps = torch.randn(mean.shape, generator=generator, device=x.device)
        z = mean + (0.5 * logvar).exp() * eps  # the reparameterisation trick
        rec = nn.functional.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").flatten(1).sum(1)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return rec + kl  # (B,)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.negative_elbo(x).mean()

    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Sums over the batch, with a fixed posterior sample so that runs compare."""
        nelbo = self.negative_elbo(x, torch.Generator(device=x.device).manual_seed(0))
        return {"loss": nelbo.sum().item(), "elbo_nats": -nelbo.sum().item()}
