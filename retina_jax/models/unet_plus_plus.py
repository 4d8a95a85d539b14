"""UNet++ (Zhou et al. 2018, "UNet++: A Nested U-Net Architecture for Medical Image Segmentation").

Nodes X^{i,j}: level i (i 2x max-pools below the input), column j along the skip pathway.
  X^{i,0}        = H(Dropout(MaxPool(X^{i-1,0})))                        the backbone encoder
  X^{i,j}, j > 0 = H(Dropout([X^{i,0}, ..., X^{i,j-1}, Up(X^{i+1,j-1})]))  the nested dense skips
H is layers.ConvBlock (two 3x3 conv + BN + ReLU) with width features * 2^i at level i.

Departures, chosen so the vessel ablation against our seed U-Net compares like with like:
- Up(.) is the seed U-Net's 3x3 stride-2 transposed conv to the target node's width (the authors'
  Keras code uses 2x2 kernels); dropout sits where the seed U-Net has it: after every pool and every
  skip concatenation; Keras batch-norm constants; 16 base features instead of the paper's 32.
- Heads return logits (the paper ends in a sigmoid). `deep_supervision="average"` averages the
  side heads' logits, not their probabilities.

`deep_supervision` picks the output:
  "none":    one 1x1 head on X^{0,depth}; nothing is sown.
  "average": 1x1 heads on every X^{0,j}, j = 1..depth; returns their mean.
  "last":    the same heads (trained through the sown side outputs: config.train.deep_supervision);
             returns the X^{0,depth} one.
With side heads, every head's logits are sown, in order j = 1..depth, as
("intermediates", "side_logits"), cropped to the input size and float32. The head on X^{0,depth} is
always "head"; the others are "side_head{j}". The Grad-CAM hook "pre_logits" is X^{0,depth}.

Defaults (16 base features, depth 4, 1 input and 1 output channel, deep_supervision "none") give
exactly 2,551,969 trainable parameters and 3,648 batch-norm statistics; "average"/"last" add 51
parameters (three more 1x1 heads). Any input size works (zero-padded to a multiple of 2^depth).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from retina_jax.models import register
from retina_jax.models.layers import (ConvBlock, Dropout, Identity, crop_to, max_pool_2x2,
                                      pad_to_multiple)

DEEP_SUPERVISION_MODES = ("none", "average", "last")


@register("unet_plus_plus", paper="Zhou et al. 2018, UNet++ (DLMIA)")
class UNetPlusPlus(nn.Module):
    num_classes: int = 1
    features: int = 16
    depth: int = 4
    dropout: float = 0.05
    batch_norm: bool = True
    deep_supervision: str = "none"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, *, train: bool):
        if self.deep_supervision not in DEEP_SUPERVISION_MODES:
            raise ValueError(f"UNetPlusPlus.deep_supervision must be one of {DEEP_SUPERVISION_MODES}, "
                             f"got {self.deep_supervision!r}.")
        x, input_size = pad_to_multiple(images, 2 ** self.depth)
        x = x.astype(self.dtype)
        dropout = Dropout(self.dropout, deterministic=not train)

        # nodes[i][j] holds X^{i,j}.
        nodes = [[] for _ in range(self.depth + 1)]
        for level in range(self.depth + 1):
            if level > 0:
                x = dropout(max_pool_2x2(nodes[level - 1][0]))
            name = "bottleneck" if level == self.depth else f"encoder{level}"
            nodes[level].append(self._conv_block(level, name)(x, train=train))

        # Column by column, so X^{i+1,j-1} exists before X^{i,j} needs it.
        for column in range(1, self.depth + 1):
            for level in range(self.depth + 1 - column):
                up = nn.ConvTranspose(self.features * 2 ** level, (3, 3), strides=(2, 2),
                                      padding="SAME", dtype=self.dtype,
                                      name=f"up{level}_{column}")(nodes[level + 1][column - 1])
                x = dropout(jnp.concatenate(nodes[level][:column] + [up], axis=-1))
                nodes[level].append(self._conv_block(level, f"decoder{level}_{column}")(x, train=train))

        top_row = nodes[0][1:]  # X^{0,1} .. X^{0,depth}, all at the (padded) input resolution
        top_row[-1] = Identity(name="pre_logits")(top_row[-1])
        if self.deep_supervision == "none":
            return crop_to(self._head("head")(top_row[-1]), input_size).astype(jnp.float32)

        sides = []
        for column, features in enumerate(top_row, start=1):
            name = "head" if column == self.depth else f"side_head{column}"
            side = crop_to(self._head(name)(features), input_size).astype(jnp.float32)
            self.sow("intermediates", "side_logits", side)
            sides.append(side)
        if self.deep_supervision == "average":
            return jnp.mean(jnp.stack(sides), axis=0)
        return sides[-1]

    def _conv_block(self, level: int, name: str) -> ConvBlock:
        return ConvBlock(self.features * 2 ** level, batch_norm=self.batch_norm, dtype=self.dtype,
                         name=name)

    def _head(self, name: str) -> nn.Conv:
        return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name=name)
