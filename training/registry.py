"""The registry of course models: name -> config, model class, dataset, export spec, task.

The training CLI, the exporter and the tests iterate over it. Neither the service nor the load
generator imports it: they serve and call whatever the exporter put into the model store,
described by model cards (core/card.py). A model's whole path starts here: its entry names the
model class (training/models/), the dataset (training/data.py), the export spec (core/spec.py)
and the serving tasks (service/tasks/).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from core.spec import (
    ExportSpec,
    autoencoder_spec,
    generator_spec,
    image_classifier_spec,
    kv_cache_lm_spec,
    recurrent_lm_spec,
    segmenter_spec,
    vae_spec,
)

from .models.autoencoder import AutoencoderConfig, DenoisingAutoencoder
from .models.char_lstm import CharLSTM, CharLSTMConfig
from .models.dcgan import DCGAN, DCGANConfig
from .models.gpt import GPT, GPTConfig
from .models.lenet import LeNet, LeNetConfig
from .models.mlp import MLP, MLPConfig
from .models.resnet import ResNet, ResNetConfig
from .models.unet import UNet, UNetConfig
from .models.vae import VAE, VAEConfig


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's; GANs use (0.5, 0.999)
    warmup_steps: int = 0  # > 0: linear warm-up then cosine decay per step (else cosine per epoch)
    grad_clip: float | None = None  # max global gradient norm
    limit_train: int | None = None  # use only the first N training examples (quick runs)
    augment: str = ""  # training/augment.py AUGMENTATIONS: random transforms of each training batch
    precision: str = "auto"  # training/runtime.py PRECISIONS: auto, fp32 or bf16 (mixed precision)


@dataclass(frozen=True)
class Graph:
    """One exported ONNX graph, saved and served under its own name, as a model in Triton's
    repository. A model's main graph is served under the model's name; a model with more than one
    (the VAE: reconstruct and generate) names the others `<model>_<part>`."""

    name: str
    tasks: tuple[str, ...]
    spec: ExportSpec


@dataclass(frozen=True)
class CourseModel:
    name: str
    chapter: str
    config_cls: type
    model_cls: type[nn.Module]
    tasks: tuple[str, ...]  # every serving task of the model, e.g. ("classify",)
    export: ExportSpec  # the main graph
    dataset: str = "real_digits"  # the default dataset
    # quick: seconds (smoke tests); full: the default; ci, where full takes minutes: what the test
    # suite trains (fewer epochs or a subset; the README quotes the full run's figures, the tests
    # hold the ci run to lower bars, stated where they are checked).
    presets: dict[str, TrainConfig] = field(default_factory=dict)
    extra_graphs: tuple[Graph, ...] = ()  # exported from the same checkpoint, with their own tasks
    # Generators: the registered classifier whose latest checkpoint scores 100 samples after training.
    judge: str | None = None
    # `python -m training <model> --ablate`: variant name -> config overrides, the full model first
    # ({}); trained and compared on validation data, never exported.
    ablations: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Seconds the full preset trained for on this 2-core CPU (`make run`, bf16, one thread each,
    # 2026-11-27): `--jobs` starts the longest first, so that no long model trains alone at the end.
    train_seconds: float = 60.0

    @property
    def graphs(self) -> tuple[Graph, ...]:
        """Every graph to export and serve, the main one first; each task is served by one graph."""
        extra = {t for g in self.extra_graphs for t in g.tasks}
        return (Graph(self.name, tuple(t for t in self.tasks if t not in extra), self.export), *self.extra_graphs)

    def build(self, config: dict[str, Any] | None = None) -> nn.Module:
        cfg = self.config_cls(**(config or {}))
        return self.model_cls(cfg)


QUICK = TrainConfig(epochs=1, limit_train=256)
# Without warm-up (or with dropout) the GPT's loss stayed on a plateau through its first epochs; with
# it, the loss breaks through, as small transformers do once attention learns to copy (`python -m
# training gpt` prints every epoch's losses and draws them in loss.png).
GPT_TRAIN = TrainConfig(
    epochs=4, batch_size=32, lr=3e-3, weight_decay=0.0, betas=(0.9, 0.95), warmup_steps=50, grad_clip=1.0
)

REGISTRY: dict[str, CourseModel] = {
    m.name: m
    for m in (
        CourseModel(
            name="mlp",
            train_seconds=33,
            chapter="MLPs and back-propagation",
            config_cls=MLPConfig,
            model_cls=MLP,
            tasks=("classify",),
            # Its logits reach 42 in magnitude (mean 7.6) after layers of 512, 512 and 256, and ONNX
            # Runtime sums those products in another order than PyTorch: 1.14e-5 at batch 7 and 64
            # (`python -m export mlp`, 2026-11-27), a relative error of 3e-7. Top-1 must still agree.
            export=image_classifier_spec(atol=3e-5),
            presets={
                "quick": QUICK,
                "ci": TrainConfig(epochs=20, augment="digits"),
                "full": TrainConfig(epochs=60, augment="digits"),
            },
        ),
        CourseModel(
            name="lenet",
            train_seconds=60,
            chapter="Convolutional networks",
            config_cls=LeNetConfig,
            model_cls=LeNet,
            tasks=("classify",),
            export=image_classifier_spec(),
            presets={
                "quick": QUICK,
                "ci": TrainConfig(epochs=10, augment="digits"),
                "full": TrainConfig(epochs=40, augment="digits"),
            },
        ),
        CourseModel(
            name="resnet",
            train_seconds=48,
            chapter="Initialisation, optimisation, regularisation (BN, dropout, skip connections)",
            config_cls=ResNetConfig,
            model_cls=ResNet,
            tasks=("classify", "explain"),  # explain: class activation maps (analysis of deep models)
            export=image_classifier_spec((3, 32, 32), cam=True),
            # training/scenes.py: eight rotated, scaled shapes among clutter that occludes them, on
            # textures (the upright shapes of "shapes" reach 100% in 4 epochs and teach nothing).
            dataset="scenes",
            ablations={
                "full": {},
                "no batch norm": {"batch_norm": False},
                "no skip connections": {"skip": False},
                "plain CNN (no BN, no skips)": {"batch_norm": False, "skip": False},
                "no dropout": {"dropout": 0.0},
                "N(0,1) init": {"init": "normal"},
            },
            # full: 98.3% of the held-out scenes after 20 epochs (the plain CNN: docs/ablation.md);
            # ablation: what `--ablate` trains each variant for (short: six variants in a few minutes).
            presets={
                "quick": QUICK,
                "ci": TrainConfig(epochs=8, lr=4e-3),
                "full": TrainConfig(epochs=20, lr=4e-3),
                "ablation": TrainConfig(epochs=6, lr=4e-3),
            },
        ),
        CourseModel(
            name="unet",
            train_seconds=103,
            chapter="Deep models for computer vision (segmentation)",
            config_cls=UNetConfig,
            model_cls=UNet,
            tasks=("segment",),
            export=segmenter_spec((3, 32, 32)),
            dataset="scene_masks",  # the ResNet's scenes, a class per visible pixel of the target
            # 12 epochs: mean IoU 0.85 on the held-out scenes; the full preset trains 20
            presets={"quick": QUICK, "ci": TrainConfig(epochs=8, lr=3e-3), "full": TrainConfig(epochs=20, lr=3e-3)},
        ),
        CourseModel(
            name="autoencoder",
            train_seconds=16,
            chapter="Auto-encoders and embeddings (denoising)",
            config_cls=AutoencoderConfig,
            model_cls=DenoisingAutoencoder,
            tasks=("denoise", "embed"),
            export=autoencoder_spec((1, 28, 28), 16),
            # 3e-3 drove the sigmoid output to all-black on the real digits' thin strokes (MSE stuck at
            # the images' mean square); 1e-3 does not.
            presets={
                "quick": QUICK,
                "ci": TrainConfig(epochs=10, lr=1e-3),
                "full": TrainConfig(epochs=20, lr=1e-3),
            },
        ),
        CourseModel(
            name="vae",
            train_seconds=226,
            chapter="Generative models (variational auto-encoder)",
            config_cls=VAEConfig,
            model_cls=VAE,
            tasks=("reconstruct", "generate"),
            export=vae_spec((1, 28, 28), 16),
            extra_graphs=(Graph("vae_decoder", ("generate",), generator_spec(16, (1, 28, 28), method="decode")),),
            judge="lenet",
            presets={
                "quick": QUICK,
                # 30 epochs drew samples LeNet scored 0.87 on average (seed 0, 100 samples), 60 drew 0.905
                # (fp32, width 32); width 64 in bf16: 0.924 in make run (docs/models.md)
                "ci": TrainConfig(epochs=15, lr=2e-3, weight_decay=0.0),
                "full": TrainConfig(epochs=60, lr=2e-3, weight_decay=0.0),
            },
        ),
        CourseModel(
            name="dcgan",
            train_seconds=272,
            chapter="Generative models (deep convolutional GAN)",
            config_cls=DCGANConfig,
            model_cls=DCGAN,
            tasks=("generate",),
            export=generator_spec(32, (1, 28, 28)),
            judge="lenet",
            presets={
                "quick": QUICK,
                # 40 epochs drew samples LeNet scored 0.89 on average (seed 0, 100 samples), 80 drew 0.906,
                # both without the moving average; with it, make run's gave 0.913 in fp32, 0.904 in bf16
                # (judged by a LeNet trained in the same precision; docs/models.md)
                "ci": TrainConfig(epochs=20, lr=2e-4, weight_decay=0.0, betas=(0.5, 0.999)),
                "full": TrainConfig(epochs=80, lr=2e-4, weight_decay=0.0, betas=(0.5, 0.999)),
            },
        ),
        CourseModel(
            name="char_lstm",
            train_seconds=103,
            chapter="Recurrent models and NLP (character-level LSTM)",
            config_cls=CharLSTMConfig,
            model_cls=CharLSTM,
            tasks=("generate_text",),
            export=recurrent_lm_spec(),
            dataset="stdlib_docstrings",
            presets={
                "quick": TrainConfig(epochs=1, limit_train=64),
                "ci": TrainConfig(epochs=1, batch_size=32, lr=3e-3, weight_decay=0.0, limit_train=1500),
                "full": TrainConfig(epochs=3, batch_size=32, lr=3e-3, weight_decay=0.0),
            },
        ),
        CourseModel(
            name="gpt",
            train_seconds=211,
            chapter="Attention and transformers (small character-level GPT with a KV cache)",
            config_cls=GPTConfig,
            model_cls=GPT,
            tasks=("generate_text",),
            export=kv_cache_lm_spec(),
            dataset="stdlib_docstrings",
            presets={
                "quick": TrainConfig(epochs=1, limit_train=64),
                "ci": replace(GPT_TRAIN, epochs=1, limit_train=1500),
                "full": GPT_TRAIN,
            },
        ),
    )
}


def get(name: str) -> CourseModel:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(REGISTRY)}") from None


def served_graphs() -> dict[str, tuple[CourseModel, Graph]]:
    """Every graph the exporter writes and the service serves: served name -> (model, graph)."""
    return {g.name: (entry, g) for entry in REGISTRY.values() for g in entry.graphs}
