"""U-Net (Ronneberger et al. 2015) with the seed notebook's Keras defaults.

Defaults (16 base features, depth 4, 1 input and 1 output channel) give exactly 2,161,361
trainable parameters and 2,944 batch-norm statistics, as the seed Keras model: two 3x3
conv+BN+ReLU per block, features x2 per level, 2x2 max-pool, dropout after each pool and
each skip concatenation, 3x3 stride-2 transposed conv up-sampling, 1x1 head (logits).
`dropblock` > 0 adds DropBlock (layers.DropBlock, squares of `dropblock_size`) after every 3x3
conv, before its batch norm, as SA-UNet (Guo et al. 2020) does.

`side_heads=True` adds a 1x1 head on every coarser decoder level ("side_head{level}", level
depth-1 .. 1), its logits bilinearly up-sampled to the input size, for deep supervision
(config.train.deep_supervision): all heads' logits are sown as ("intermediates", "side_logits"),
coarsest first, the last being the returned logits. The returned logits do not depend on the
side heads, which add features * 2^level + 1 parameters per class and level (115 at width 8,
depth 4, 1 class).
"""
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from retina_jax.models import register
from retina_jax.models.layers import (ConvBlock, Dropout, Identity, crop_to, max_pool_2x2,
                                      pad_to_multiple)


@register("unet", paper="Ronneberger et al. 2015, U-Net (seed Keras defaults)")
class UNet(nn.Module):
    num_classes: int = 1
    features: int = 16
    depth: int = 4
    batch_norm: bool = True
    dropout: float = 0.05
    dropblock: float = 0.0
    dropblock_size: int = 7
    upsample: Literal["transpose", "resize"] = "transpose"
    side_heads: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, *, train: bool):
        if self.upsample not in ("transpose", "resize"):
            raise ValueError(f"UNet.upsample must be 'transpose' or 'resize', got {self.upsample!r}.")
        x, input_size = pad_to_multiple(images, 2 ** self.depth)
        padded_size = x.shape[1:3]
        x = x.astype(self.dtype)
        dropout = Dropout(self.dropout, deterministic=not train)
        skips = []
        for level in range(self.depth):
            x = self._conv_block(self.features * 2 ** level, f"encoder{level}")(x, train=train)
            skips.append(x)
            x = dropout(max_pool_2x2(x))
        x = self._conv_block(self.features * 2 ** self.depth, "bottleneck")(x, train=train)
        for level in reversed(range(self.depth)):
            features = self.features * 2 ** level
            x = self._upsample(x, features, name=f"up{level}")
            x = dropout(jnp.concatenate([x, skips[level]], axis=-1))
            x = self._conv_block(features, f"decoder{level}")(x, train=train)
            if self.side_heads and level > 0:
                side = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name=f"side_head{level}")(x)
                side = jax.image.resize(side, (side.shape[0], *padded_size, side.shape[-1]), "bilinear")
                self.sow("intermediates", "side_logits", crop_to(side, input_size).astype(jnp.float32))
        x = Identity(name="pre_logits")(x)
        logits = crop_to(nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="head")(x),
                         input_size).astype(jnp.float32)
        if self.side_heads:
            self.sow("intermediates", "side_logits", logits)
        return logits

    def _conv_block(self, features: int, name: str) -> ConvBlock:
        return ConvBlock(features, batch_norm=self.batch_norm, dropblock=self.dropblock,
                         dropblock_size=self.dropblock_size, dtype=self.dtype, name=name)

    def _upsample(self, x, features: int, name: str):
        if self.upsample == "transpose":
            return nn.ConvTranspose(features, (3, 3), strides=(2, 2), padding="SAME",
                                    dtype=self.dtype, name=name)(x)
        batch, height, width, channels = x.shape
        x = jax.image.resize(x, (batch, 2 * height, 2 * width, channels), "bilinear")
        return nn.Conv(features, (3, 3), padding="SAME", kernel_init=nn.initializers.he_normal(),
                       dtype=self.dtype, name=name)(x)
