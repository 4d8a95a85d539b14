"""The seed repository's hourglass convolutional autoencoder for vessel segmentation.

Source: Cheung-Chak-Hang-Billy/Retina-Images-Processing, Retina_Images_Processing.ipynb, section
"3. Build the autoencoder model" (the Keras `Sequential` that reached Dice 0.7448 on the 173
validation patches). An encoder down to a bottleneck and a decoder back up, with NO skip connections:

  encoder i (i = 0..depth-1): conv(features*4^i) -> dropout -> conv(2*features*4^i) -> 2x2 max-pool
  bottleneck:                 conv(features*4^depth) -> dropout(bottleneck_dropout) -> conv(same)
  decoder i (i = depth-1..0): 2x up-sampling -> conv(w_i) -> dropout -> conv(w_i),
                              w_i = 2*features*4^i, except w_0 = features (the seed's last level
                              returns to the first-layer width)
  head:                       1x1 conv to num_classes (logits; the seed ends in a sigmoid)
Every conv but the head is 3x3, "same" padding, He-normal init, ReLU; the head is He-normal too.
The first up-sampling after the bottleneck is bicubic and the others nearest-neighbour, as in the
seed's code (its prose asks for nearest everywhere). Dropout rates are the seed's code: 0.2 in the
encoder/decoder, 0.3 in the bottleneck.

Defaults (features 4, depth 2, no batch norm, 1 input and 1 output channel) reproduce the seed model:
exactly 90,589 trainable parameters (the Keras summary's total) and no batch-norm statistics.
`batch_norm=True` (not in the seed) adds Keras-style batch norm between each conv and its ReLU.
Deliberate departures: logits instead of a sigmoid; any H, W (zero-padded to a multiple of 2^depth
and cropped back) and any number of input channels. With the Keras model's weights copied in, the
sigmoid of these logits matched the seed Keras model's output to 1e-6 on 64x64 patches (Keras 3.15;
jax.image.resize's bicubic equals UpSampling2D's for 2x).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from retina_jax.models import register
from retina_jax.models.layers import (ConvBlock, Dropout, Identity, crop_to, he_normal, max_pool_2x2,
                                      pad_to_multiple)


class DropoutConvPair(nn.Module):
    """conv(first_features) -> dropout -> conv(second_features), each conv -> (BN) -> ReLU."""
    first_features: int
    second_features: int
    dropout: float
    batch_norm: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = ConvBlock(self.first_features, num_convs=1, batch_norm=self.batch_norm, dtype=self.dtype,
                      name="conv_a")(x, train=train)
        x = Dropout(self.dropout, deterministic=not train)(x)
        return ConvBlock(self.second_features, num_convs=1, batch_norm=self.batch_norm,
                         dtype=self.dtype, name="conv_b")(x, train=train)


@register("hourglass", paper="seed autoencoder, Cheung-Chak-Hang-Billy/Retina-Images-Processing")
class Hourglass(nn.Module):
    num_classes: int = 1
    features: int = 4
    depth: int = 2
    dropout: float = 0.2
    bottleneck_dropout: float = 0.3
    batch_norm: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, *, train: bool):
        x, input_size = pad_to_multiple(images, 2 ** self.depth)
        x = x.astype(self.dtype)
        for level in range(self.depth):
            width = self.features * 4 ** level
            x = self._pair(width, 2 * width, self.dropout, f"encoder{level}")(x, train=train)
            x = max_pool_2x2(x)
        width = self.features * 4 ** self.depth
        x = self._pair(width, width, self.bottleneck_dropout, "bottleneck")(x, train=train)
        for level in reversed(range(self.depth)):
            x = _upsample2x(x, "bicubic" if level == self.depth - 1 else "nearest")
            width = 2 * self.features * 4 ** level if level > 0 else self.features
            x = self._pair(width, width, self.dropout, f"decoder{level}")(x, train=train)
        x = Identity(name="pre_logits")(x)
        logits = nn.Conv(self.num_classes, (1, 1), kernel_init=he_normal, dtype=self.dtype,
                         name="head")(x)
        return crop_to(logits, input_size).astype(jnp.float32)

    def _pair(self, first: int, second: int, dropout: float, name: str) -> DropoutConvPair:
        return DropoutConvPair(first, second, dropout, self.batch_norm, self.dtype, name=name)


def _upsample2x(x, method: str):
    if method == "nearest":  # exactly Keras UpSampling2D's pixel repetition
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    batch, height, width, channels = x.shape
    return jax.image.resize(x, (batch, 2 * height, 2 * width, channels), method).astype(x.dtype)
