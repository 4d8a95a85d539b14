"""Model registry: configs name a model by string; every model is a pure flax.linen Module.

Usage:
  model = models.get_model("unet", num_classes=1, features=16)
  variables = model.init(rng, images, train=False)
  logits = model.apply(variables, images, train=False)
"""
import inspect
from typing import Callable

import flax.linen as nn

_REGISTRY: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def add(module_class: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"Model name {name!r} is registered twice.")
        _REGISTRY[name] = module_class
        return module_class
    return add


def available() -> list[str]:
    return sorted(_REGISTRY)


def get_model(name: str, **kwargs) -> nn.Module:
    """Builds the registered model `name` with its constructor keyword arguments."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}; available models: {', '.join(available())}.")
    module_class = _REGISTRY[name]
    accepted = set(inspect.signature(module_class).parameters) - {"parent", "name"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"Model {name!r} got unknown arguments {unknown}; it accepts {sorted(accepted)}.")
    return module_class(**kwargs)


# Importing the model modules fills the registry.
from retina_jax.models import unet  # noqa: E402,F401
