"""Models by name. Every factory takes ``(input_shape, num_classes, **model config)`` and returns an nn.Module.

Example::

    model = build_model("mlp", (1, 28, 28), 10, depth=2, width=512, activation="relu")
"""

from __future__ import annotations

from torch import nn

from tricklab.models.cnn import CNN
from tricklab.models.inception import Inception
from tricklab.models.mlp import MLP
from tricklab.models.resnet import ResNet
from tricklab.registry import Registry

MODELS: Registry = Registry("model")

#: The module tricklab's own models live in (plugins live elsewhere).
BUILTIN_MODULE = "tricklab.models"
#: The config's model keys that describe a built-in model's shape; a plugin takes those its signature names.
MODEL_SHAPE = ("depth", "width", "activation", "norm", "norm_position", "dropout", "residual")
MODELS.register("mlp", MLP, help="flatten → depth × [Linear → norm → act → dropout] → Linear")
MODELS.register("cnn", CNN, help="depth × [conv3 → norm → act → dropout], 2 max-pools → Linear; 2-D or 1-D")
MODELS.register(
    "resnet",
    ResNet,
    help="3×3 stem → depth BasicBlocks act(x+F(x)) in ≤3 stages (w, 2w, 4w) → avg pool → Linear; He et al. 2016",
)
MODELS.register(
    "inception",
    Inception,
    help="stem → depth × [1×1 | 1×1→3×3 | 1×1→5×5 | pool→1×1] → avg pool → Linear; Szegedy et al. 2015",
)


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **kwargs) -> nn.Module:
    """Build the registered model ``name`` for inputs of ``input_shape`` (without the batch dimension)."""
    return MODELS.get(name)(tuple(input_shape), num_classes, **kwargs)


__all__ = ["BUILTIN_MODULE", "MODEL_SHAPE", "MODELS", "build_model", "MLP", "CNN", "ResNet", "Inception"]
