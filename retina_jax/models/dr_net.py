"""DRNet: a VGG-style CNN that grades diabetic retinopathy (0-4) on 512x512 colour fundus photos.

Design after the Kaggle Diabetic Retinopathy Detection (2015) networks of deepsense.io and the
o_O team (the "DeepSense-derived" design the seed cites): a strided 5x5 stem that halves the
512x512 photo, stacked 3x3 convs with leaky ReLU (slope 0.01) and a 2x2 max-pool after each
stage, then a dense head with dropout. It is not a layer-by-layer reproduction of either
(neither published weights or exact code we could check); what it keeps is their recipe.

  stem     5x5/2 conv (features) -> BN -> leaky ReLU                    512 -> 256
  encoder0..4  two 3x3 conv -> BN -> leaky ReLU, then 2x2 max-pool;
               widths features x (1, 2, 4, 8, 16) = 32 ... 512          256 -> 8
  pool     global average and global max pooling, concatenated (2 x 512): any input size works
  head     dropout -> Dense 512 -> leaky ReLU -> dropout -> Dense num_classes

`num_classes=5` is the 5-way grade classifier; `num_classes=1` gives the single regression
output (grade as a real number, thresholded at evaluation, as the Kaggle solutions did): the
config picks by setting num_classes and the matching loss.
Defaults (3 input channels, 5 classes): 5,252,389 trainable parameters, 4,032 batch stats
(num_classes=1: 5,250,337). Inputs must be at least 64x64 (stem + five pools).
BatchNorm uses the seed's Keras constants (layers.BN_MOMENTUM / BN_EPSILON); convs followed by BN
carry no bias. The Grad-CAM hook `pre_logits` is the last stage's (B, h, w, C) map, before pooling.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from retina_jax.models import register
from retina_jax.models.layers import (BN_EPSILON, BN_MOMENTUM, Dropout, Identity, he_normal,
                                      max_pool_2x2)

LEAKY_SLOPE = 0.01
WIDTH_MULTIPLIERS = (1, 2, 4, 8, 16)
CONVS_PER_STAGE = 2
HIDDEN_FEATURES = 512


def leaky_relu(x):
    return nn.leaky_relu(x, negative_slope=LEAKY_SLOPE)


class ConvNormAct(nn.Module):
    """conv -> (BatchNorm) -> leaky ReLU."""
    features: int
    kernel_size: int = 3
    strides: int = 1
    batch_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.Conv(self.features, (self.kernel_size,) * 2, (self.strides,) * 2,
                    padding="SAME", use_bias=not self.batch_norm, kernel_init=he_normal,
                    dtype=self.dtype, name="conv")(x)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                             epsilon=BN_EPSILON, dtype=self.dtype, name="bn")(x)
        return leaky_relu(x)


class VGGStage(nn.Module):
    features: int
    batch_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        for i in range(CONVS_PER_STAGE):
            x = ConvNormAct(self.features, 3, 1, self.batch_norm, self.dtype, name=f"conv{i}")(
                x, train=train)
        return max_pool_2x2(x)


@register("dr_net", task="classification", input_shape=(512, 512, 3), paper="VGG-style DR grading CNN after DeepSense (own design)")
class DRNet(nn.Module):
    num_classes: int = 5  # 5: grade classifier; 1: single regression output
    features: int = 32  # stem and first stage width
    dropout: float = 0.5
    batch_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, *, train: bool):
        if min(images.shape[1:3]) < 2 ** (len(WIDTH_MULTIPLIERS) + 1):
            raise ValueError(f"DRNet needs inputs of at least 64x64, got {images.shape[1:3]}.")
        x = ConvNormAct(self.features, 5, 2, self.batch_norm, self.dtype, name="stem")(
            images.astype(self.dtype), train=train)
        for i, multiplier in enumerate(WIDTH_MULTIPLIERS):
            x = VGGStage(self.features * multiplier, self.batch_norm, self.dtype,
                         name=f"encoder{i}")(x, train=train)
        x = Identity(name="pre_logits")(x)
        # Average pooling sees diffuse disease, max pooling a single lesion; both, for any size.
        x = jnp.concatenate([jnp.mean(x, axis=(1, 2)), jnp.max(x, axis=(1, 2))], axis=-1)
        dropout = Dropout(self.dropout, deterministic=not train)
        x = leaky_relu(nn.Dense(HIDDEN_FEATURES, dtype=self.dtype, name="hidden")(dropout(x)))
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(dropout(x))
        return logits.astype(jnp.float32)
