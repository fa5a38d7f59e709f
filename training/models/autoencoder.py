"""Convolutional denoising auto-encoder (course chapter: auto-encoders and embeddings): it learns
to remove Gaussian noise from digits, and its bottleneck is an embedding of the digit."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .common import conv_down, conv_up


@dataclass
class AutoencoderConfig:
    in_channels: int = 1
    latent: int = 16
    noise_std: float = 0.4  # training corruption; the same level is used to report PSNR
    num_classes: int = 10  # unused by the model; datasets pass it to every registered model


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, for pixels in [0, 1]."""
    mse = ((x - ref) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


class DenoisingAutoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.in_channels
        self.encoder = nn.Sequential(
            *conv_down(c),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, cfg.latent),  # (B, latent)
        )
        self.decoder = nn.Sequential(
            nn.Linear(cfg.latent, 64 * 7 * 7),
            nn.ReLU(),
            nn.Unflatten(1, (64, 7, 7)),
            *conv_up(c),
            nn.Sigmoid(),  # (B, c, 28, 28) in [0, 1]
        )

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=generator, device=x.device) * self.cfg.noise_std
        return (x + noise).clamp(0, 1)

    def forward(self, noisy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(noisy)  # (B, latent)
        return self.decoder(z), z  # denoised (B, c, H, W), embedding (B, latent)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        denoised, _ = self(self.corrupt(x))
        return nn.functional.mse_loss(denoised, x)

    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Sums over the batch, with fixed noise so that runs compare."""
        noisy = self.corrupt(x, torch.Generator(device=x.device).manual_seed(0))
        denoised, _ = self(noisy)
        return {
            "loss": nn.functional.mse_loss(denoised, x, reduction="none").flatten(1).mean(1).sum().item(),
            "psnr_noisy_db": psnr(noisy, x).sum().item(),
            "psnr_denoised_db": psnr(denoised, x).sum().item(),
        }
