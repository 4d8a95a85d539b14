"""Building blocks shared by the models."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# Keras defaults, which the seed notebooks trained with.
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3
he_normal = nn.initializers.he_normal()


class ConvBlock(nn.Module):
    """`num_convs` x [3x3 conv -> (batch norm) -> ReLU]."""
    features: int
    num_convs: int = 2
    batch_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        for i in range(self.num_convs):
            x = nn.Conv(self.features, (3, 3), padding="SAME", kernel_init=he_normal,
                        dtype=self.dtype, name=f"conv{i}")(x)
            if self.batch_norm:
                x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                                 epsilon=BN_EPSILON, dtype=self.dtype, name=f"bn{i}")(x)
            x = nn.relu(x)
        return x


class Identity(nn.Module):
    """A named no-op layer: the hook where Grad-CAM reads and perturbs activations."""

    @nn.compact
    def __call__(self, x):
        x = self.perturb("activation", x)
        self.sow("intermediates", "activation", x)
        return x


def pad_to_multiple(images: jnp.ndarray, multiple: int) -> tuple[jnp.ndarray, tuple[int, int]]:
    """Zero-pads (B,H,W,C) at the bottom/right so H and W are multiples of `multiple`.

    Returns the padded images and the original (H, W) for `crop_to`.
    """
    height, width = images.shape[1:3]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h or pad_w:
        images = jnp.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    return images, (height, width)


def crop_to(images: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    return images[:, : size[0], : size[1], :]
