"""OctNET: the seed's light OCT B-scan classifier (CNV / DME / DRUSEN / NORMAL).

Source: KHEERSAGAR-PATEL/Deep-Neural-Network-based-Retinal-Disease-Classifier-using-OCT-Scans
(README "3.2 Implementation" and the `OctNet` class of kheer.ipynb; trained on Kermany et al.'s
OCT2017, "Identifying medical diagnoses and treatable diseases by image-based deep learning",
Cell 2018). Six conv blocks, each conv -> ReLU -> BatchNorm -> 2x2 max-pool, with kernel sizes
7, 7, 5, 5, 3, 3 and widths 32, 32, 64, 128, 256, 512; average pooling to a 512-d feature; a
three-layer MLP 512 -> 128 -> 32 -> num_classes with dropout 0.5 after the two hidden layers.

Defaults (1 input channel, 4 classes): 1,855,300 trainable parameters and 2,048 batch stats
(3 input channels, as the notebook fed 227x227 RGB-decoded scans: 1,858,436). That is 7.3% of
ResNet-50's 25,557,032; the seed README rounds it to "6.9%", but the notebook's layers give
this count, and they are what is reproduced here.

Deliberate departures from the notebook:
- ReLU between the MLP layers (the notebook has none, which collapses its "three-layer MLP"
  into one rank-32 linear map); the parameter count is unchanged.
- Each block has its own BatchNorm (the notebook re-uses conv1's BN instance after conv2).
- Global average pooling instead of a fixed 3x3 average pool, so any input of at least 64x64
  works (the six VALID 2x2 pools need it); at the notebook's 227x227 both pool the same 3x3 map.
- Logits, not softmax. BatchNorm keeps PyTorch's defaults (momentum 0.9 in flax terms,
  eps 1e-5), as the notebook trained with.
`batch_norm=False` drops the BN layers (2,048 fewer parameters).
The Grad-CAM hook `pre_logits` holds the last conv block's (B, h, w, C) map, before pooling.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from retina_jax.models import register
from retina_jax.models.layers import Dropout, Identity, he_normal, max_pool_2x2

# PyTorch BatchNorm2d defaults (torch momentum 0.1 == flax momentum 0.9): the notebook's.
TORCH_BN_MOMENTUM = 0.9
TORCH_BN_EPSILON = 1e-5
KERNEL_SIZES = (7, 7, 5, 5, 3, 3)
WIDTH_MULTIPLIERS = (1, 1, 2, 4, 8, 16)  # x features: 32, 32, 64, 128, 256, 512
MLP_FEATURES = (128, 32)


class OctNetBlock(nn.Module):
    """conv -> ReLU -> (BatchNorm) -> 2x2 max-pool, in the notebook's order."""
    features: int
    kernel_size: int
    batch_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.Conv(self.features, (self.kernel_size, self.kernel_size), padding="SAME",
                    kernel_init=he_normal, dtype=self.dtype, name="conv")(x)
        x = nn.relu(x)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=TORCH_BN_MOMENTUM,
                             epsilon=TORCH_BN_EPSILON, dtype=self.dtype, name="bn")(x)
        return max_pool_2x2(x)


@register("octnet", task="classification", input_shape=(227, 227, 1), paper="OctNET (seed OCT classifier notebook)")
class OctNet(nn.Module):
    num_classes: int = 4
    features: int = 32  # first block's width; the six blocks use x1, x1, x2, x4, x8, x16
    dropout: float = 0.5
    batch_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, *, train: bool):
        if min(images.shape[1:3]) < 2 ** len(KERNEL_SIZES):
            raise ValueError(f"OctNet needs inputs of at least 64x64, got {images.shape[1:3]}.")
        x = images.astype(self.dtype)
        for i, (kernel_size, multiplier) in enumerate(zip(KERNEL_SIZES, WIDTH_MULTIPLIERS)):
            x = OctNetBlock(self.features * multiplier, kernel_size, self.batch_norm, self.dtype,
                            name=f"encoder{i}")(x, train=train)
        x = Identity(name="pre_logits")(x)
        x = jnp.mean(x, axis=(1, 2))
        for i, features in enumerate(MLP_FEATURES):
            x = nn.relu(nn.Dense(features, dtype=self.dtype, name=f"mlp{i}")(x))
            x = Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)
