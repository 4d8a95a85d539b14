"""Model registry: configs name a model by string; every model is a pure flax.linen Module.

Usage:
  model = models.get_model("unet", num_classes=1, features=16)
  variables = model.init(rng, images, train=False)
  logits = model.apply(variables, images, train=False)
"""
import dataclasses
import inspect
from typing import Callable

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a registered model is for: its task, reference input (H, W, C) and source paper."""
    task: str = "segmentation"
    input_shape: tuple[int, int, int] = (64, 64, 1)
    paper: str = ""


_REGISTRY: dict[str, type[nn.Module]] = {}
_INFO: dict[str, ModelInfo] = {}


def register(name: str, *, task: str = "segmentation", input_shape: tuple[int, int, int] = (64, 64, 1),
             paper: str = "") -> Callable[[type[nn.Module]], type[nn.Module]]:
    def add(module_class: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"Model name {name!r} is registered twice.")
        _REGISTRY[name] = module_class
        _INFO[name] = ModelInfo(task, input_shape, paper)
        return module_class
    return add


def info(name: str) -> ModelInfo:
    get_model_class(name)
    return _INFO[name]


def get_model_class(name: str) -> type[nn.Module]:
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}; available models: {', '.join(available())}.")
    return _REGISTRY[name]


def available() -> list[str]:
    return sorted(_REGISTRY)


def get_model(name: str, **kwargs) -> nn.Module:
    """Builds the registered model `name` with its constructor keyword arguments."""
    module_class = get_model_class(name)
    accepted = set(inspect.signature(module_class).parameters) - {"parent", "name"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"Model {name!r} got unknown arguments {unknown}; it accepts {sorted(accepted)}.")
    return module_class(**kwargs)


# Importing the model modules fills the registry.
from retina_jax.models import (  # noqa: E402,F401
    dr_net, hourglass, octnet, resnet, resunet, unet, unet_plus_plus)
