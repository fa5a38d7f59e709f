"""DCGAN (course chapter: generative models), after Radford et al. and pytorch/examples' dcgan,
sized for 28x28 digits: a transposed-convolution generator with batch norm and a strided-
convolution discriminator with leaky ReLUs. Only the generator is exported and served: the
moving average of its weights over training (`generator_ema`)."""

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
    # The served generator is an exponential moving average of the trained one's weights (as in
    # ProGAN, StyleGAN and BigGAN): a GAN's last step is one point of an oscillation, the average
    # is steadier. 0 serves the trained weights themselves.
    ema_decay: float = 0.999
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
        self.generator = self._generator(cfg)
        self.generator_ema = self._generator(cfg).requires_grad_(False)  # what forward() serves
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
        self.generator_ema.load_state_dict(self.generator.state_dict())
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.int64))

    @classmethod
    def upgrade(cls, config: dict, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
        """A checkpoint written before the generator's moving average (2026-11-27) has none: it
        serves its trained generator, as it did (training/train.py load_checkpoint)."""
        if "generator_ema.0.weight" in state:
            return config, state
        average = {
            "generator_ema." + k.removeprefix("generator."): v for k, v in state.items() if k.startswith("generator.")
        }
        return config, {**state, **average, "ema_updates": torch.zeros((), dtype=torch.int64)}

    @staticmethod
    def _generator(cfg: DCGANConfig) -> nn.Sequential:
        w, c = cfg.width, cfg.in_channels
        return nn.Sequential(
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

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The served graph: latent noise (B, latent) -> images (B, c, 28, 28) in [0, 1], from the
        generator's moving average."""
        return self.generator_ema(z)

    @torch.no_grad()
    def after_step(self) -> None:
        """Called by the training loop after each optimiser step: move the average towards the
        trained generator. The decay is min(ema_decay, (1 + n) / (10 + n)) after n updates
        (TensorFlow's ExponentialMovingAverage with num_updates): 0.18 at first, so that early on
        the average follows the weights; 0.998 after the full preset's 5,040 steps. Batch norm's
        running statistics are copied from the trained generator, not averaged (BigGAN recomputes
        them for the averaged weights; not done here)."""
        self.ema_updates += 1
        n = int(self.ema_updates)
        decay = min(self.cfg.ema_decay, (1 + n) / (10 + n))
        for avg, p in zip(self.generator_ema.parameters(), self.generator.parameters(), strict=True):
            avg.lerp_(p, 1 - decay)
        for avg, b in zip(self.generator_ema.buffers(), self.generator.buffers(), strict=True):
            avg.copy_(b)

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
