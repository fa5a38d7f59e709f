"""DCGAN (course chapter: generative models), after Radford et al. and pytorch/examples' dcgan,
sized for 28x28 digits: a transposed-convolution generator with batch norm and a strided-
convolution discriminator with leaky ReLUs. Only the generator is exported and served."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call


@dataclass
class DCGANConfig:
    in_channels: int = 1
    latent: int = 32
    width: int = 64  # channels of the generator's last hidden layer
    label_smoothing: float = 0.9  # target for real images (Salimans et al.), keeps D from saturating
    num_classes: int = 10  # unused by the model; datasets pass it to every registered model


def _init(m: nn.Module) -> None:
    """The DCGAN paper's initialisation: N(0, 0.02) weights, BN scales around 1."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class DCGAN(nn.Module):
    select_best_epoch = False  # train to the end: a GAN's losses do not rank its epochs

    def __init__(self, cfg: DCGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, c = cfg.width, cfg.in_channels
        self.generator = nn.Sequential(
            nn.Linear(cfg.latent, 2 * w * 7 * 7, bias=False),
            nn.BatchNorm1d(2 * w * 7 * 7),
            nn.ReLU(),
            nn.Unflatten(1, (2 * w, 7, 7)),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(),  # (B, w, 14, 14)
            nn.ConvTranspose2d(w, c, 4, 2, 1),
            nn.Sigmoid(),  # (B, c, 28, 28) in [0, 1]
        )
        self.discriminator = nn.Sequential(
            nn.Conv2d(c, w, 4, 2, 1),
            nn.LeakyReLU(0.2),  # (B, w, 14, 14)
            nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.LeakyReLU(0.2),  # (B, 2w, 7, 7)
            nn.Flatten(),
            nn.Linear(2 * w * 7 * 7, 1),  # (B, 1) logit of "real"
        )
        self.apply(_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The served graph: latent noise (B, latent) -> images (B, c, 28, 28) in [0, 1]."""
        return self.generator(z)

    def _d_frozen(self, x: torch.Tensor) -> torch.Tensor:
        """The discriminator with its parameters detached: the generator's loss flows back into
        the generator only, so one backward pass and one optimiser train both players."""
        params = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        return functional_call(self.discriminator, params, (x,))

    def losses(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        bce = nn.functional.binary_cross_entropy_with_logits
        z = torch.randn(len(x), self.cfg.latent, generator=generator, device=x.device)
        fake = self.generator(z)
        real_logit, fake_logit = self.discriminator(x), self.discriminator(fake.detach())
        d_loss = bce(real_logit, torch.full_like(real_logit, self.cfg.label_smoothing)) + bce(
            fake_logit, torch.zeros_like(fake_logit)
        )
        g_logit = self._d_frozen(fake)
        g_loss = bce(g_logit, torch.ones_like(g_logit))  # the non-saturating generator loss
        return d_loss, g_loss

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d_loss, g_loss = self.losses(x)
        return d_loss + g_loss

    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Both players' losses (sums over the batch) on held-out images and fixed noise. A GAN's
        losses do not rank epochs; its quality is judged on samples (see sample_quality)."""
        d_loss, g_loss = self.losses(x, torch.Generator(device=x.device).manual_seed(0))
        return {
            "loss": (d_loss + g_loss).item() * len(x),
            "d_loss": d_loss.item() * len(x),
            "g_loss": g_loss.item() * len(x),
        }
