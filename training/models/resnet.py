"""Small ResNet (course chapter: initialisation, optimisation, regularisation): batch
normalisation, dropout, skip connections and He initialisation, for 32x32 RGB images.

Each technique can be switched off in the config (`batch_norm`, `skip`, `dropout`, `init`), so that
`python -m training resnet --ablate` trains the variants the chapter compares; the served model is
always the full one (the defaults)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .common import Normalize


@dataclass
class ResNetConfig:
    in_channels: int = 3
    widths: tuple[int, ...] = (16, 32, 64)  # one stage per width; stages after the first halve H, W
    blocks_per_stage: int = 1
    num_classes: int = 8  # the scenes' shapes (training/scenes.py)
    dropout: float = 0.2
    batch_norm: bool = True  # False: no normalisation layers (plain convolutions with biases)
    skip: bool = True  # False: no skip connections (a plain CNN of the same depth)
    init: str = "he"  # "he": He (Kaiming) normal; "normal": N(0, 1) weights, the poor initialisation
    mean: float = 0.4
    std: float = 0.3


def norm(c: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(c) if batch_norm else nn.Identity()


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity (or a 1x1 projection when the shape changes);
    without `skip`, only the two convolutions; without batch norm, convolutions with biases."""

    def __init__(self, c_in: int, c_out: int, stride: int, batch_norm: bool = True, skip: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not batch_norm)
        self.bn1 = norm(c_out, batch_norm)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=not batch_norm)
        self.bn2 = norm(c_out, batch_norm)
        self.skip: nn.Module | None = None
        if skip:
            self.skip = (
                nn.Identity()
                if stride == 1 and c_in == c_out
                else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=not batch_norm), norm(c_out, batch_norm))
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y if self.skip is None else y + self.skip(x))


class ResNet(nn.Module):
    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w0 = cfg.widths[0]
        if cfg.init not in ("he", "normal"):
            raise ValueError(f"ResNetConfig.init is {cfg.init!r}; accepted: 'he', 'normal'")
        self.stem = nn.Sequential(
            Normalize(cfg.mean, cfg.std),
            nn.Conv2d(cfg.in_channels, w0, 3, 1, 1, bias=not cfg.batch_norm),
            norm(w0, cfg.batch_norm),
            nn.ReLU(),
        )
        layers, c = [], w0
        for i, w in enumerate(cfg.widths):
            for j in range(cfg.blocks_per_stage):
                layers.append(BasicBlock(c, w, 2 if i > 0 and j == 0 else 1, cfg.batch_norm, cfg.skip))
                c = w
        self.features = nn.Sequential(*layers)  # (B, C, H/4, W/4) for three stages
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(c, cfg.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear) and cfg.init == "normal":  # the poor initialisation
                nn.init.normal_(m.weight, 0.0, 1.0)
            elif isinstance(m, nn.Conv2d):  # He initialisation for the ReLU network
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(self.stem(x))  # (B, C, h, w)
        return self.fc(self.dropout(f.mean(dim=(2, 3))))  # global average pooling -> (B, classes)

    def explain(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the class activation map of the predicted class (course chapter: analysis
        of deep models): the last features weighted by that class's classifier row, upsampled to
        the input and scaled to [0, 1] per image. (B, classes), (B, H, W)."""
        f = self.features(self.stem(x))  # (B, C, h, w)
        logits = self.fc(self.dropout(f.mean(dim=(2, 3))))
        w = self.fc.weight[logits.argmax(dim=1)]  # (B, C)
        cam = torch.einsum("bchw,bc->bhw", f, w)[:, None]  # (B, 1, h, w)
        cam = nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        lo = cam.amin(dim=(1, 2), keepdim=True)
        hi = cam.amax(dim=(1, 2), keepdim=True)
        return logits, (cam - lo) / (hi - lo + 1e-6)
