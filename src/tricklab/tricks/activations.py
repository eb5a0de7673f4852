"""Activation functions by name. The choice matters for the lesson: sigmoid and tanh saturate, ReLU can die."""

from __future__ import annotations

from torch import nn

from tricklab.registry import Registry

ACTIVATIONS: Registry = Registry("activation")
ACTIVATIONS.register("relu", nn.ReLU, help="max(0, x); Nair & Hinton 2010")
ACTIVATIONS.register("tanh", nn.Tanh, help="tanh(x); saturates for |x| ≫ 1")
ACTIVATIONS.register("sigmoid", nn.Sigmoid, help="1/(1+e^−x); saturates, outputs not centred")
ACTIVATIONS.register("gelu", nn.GELU, help="x·Φ(x); Hendrycks & Gimpel 2016")
