"""The registry of course models: name -> config, model class, dataset, export spec, task.

The training CLI, the exporter, the tests and the load tests iterate over it. The service never
imports it: it serves whatever the exporter put into the model store, described by model cards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from export.spec import ExportSpec, autoencoder_spec, image_classifier_spec, segmenter_spec

from .models.autoencoder import AutoencoderConfig, DenoisingAutoencoder
from .models.lenet import LeNet, LeNetConfig
from .models.mlp import MLP, MLPConfig
from .models.resnet import ResNet, ResNetConfig
from .models.unet import UNet, UNetConfig


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    limit_train: int | None = None  # use only the first N training examples (quick runs)


@dataclass(frozen=True)
class CourseModel:
    name: str
    chapter: str
    config_cls: type
    model_cls: type[nn.Module]
    tasks: tuple[str, ...]  # the serving tasks, e.g. ("classify",)
    export: ExportSpec
    dataset: str = "digits"  # the default dataset
    presets: dict[str, TrainConfig] = field(default_factory=dict)

    def build(self, config: dict[str, Any] | None = None) -> nn.Module:
        cfg = self.config_cls(**(config or {}))
        return self.model_cls(cfg)


QUICK = TrainConfig(epochs=1, limit_train=256)

REGISTRY: dict[str, CourseModel] = {
    m.name: m
    for m in (
        CourseModel(
            name="mlp",
            chapter="MLPs and back-propagation",
            config_cls=MLPConfig,
            model_cls=MLP,
            tasks=("classify",),
            export=image_classifier_spec(),
            presets={"quick": QUICK, "full": TrainConfig(epochs=30)},
        ),
        CourseModel(
            name="lenet",
            chapter="Convolutional networks",
            config_cls=LeNetConfig,
            model_cls=LeNet,
            tasks=("classify",),
            export=image_classifier_spec(),
            presets={"quick": QUICK, "full": TrainConfig(epochs=30)},
        ),
        CourseModel(
            name="resnet",
            chapter="Initialisation, optimisation, regularisation (BN, dropout, skip connections)",
            config_cls=ResNetConfig,
            model_cls=ResNet,
            tasks=("classify", "explain"),  # explain: class activation maps (analysis of deep models)
            export=image_classifier_spec((3, 32, 32), 4, cam=True),
            dataset="shapes",
            presets={"quick": QUICK, "full": TrainConfig(epochs=4, lr=3e-3)},
        ),
        CourseModel(
            name="unet",
            chapter="Deep models for computer vision (segmentation)",
            config_cls=UNetConfig,
            model_cls=UNet,
            tasks=("segment",),
            export=segmenter_spec((3, 32, 32), 5),
            dataset="shape_masks",
            presets={"quick": QUICK, "full": TrainConfig(epochs=5, lr=3e-3)},
        ),
        CourseModel(
            name="autoencoder",
            chapter="Auto-encoders and embeddings (denoising)",
            config_cls=AutoencoderConfig,
            model_cls=DenoisingAutoencoder,
            tasks=("denoise", "embed"),
            export=autoencoder_spec((1, 28, 28), 16),
            presets={"quick": QUICK, "full": TrainConfig(epochs=40, lr=3e-3)},
        ),
    )
}


def get(name: str) -> CourseModel:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(REGISTRY)}") from None
