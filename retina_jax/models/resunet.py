"""Deep Residual U-Net ("resunet") and ResUNet++ ("resunet_pp").

ResUNet: Zhang, Liu & Wang 2018, "Road Extraction by Deep Residual U-Net" (IEEE GRSL,
arXiv:1711.10684). A U-Net built from pre-activation residual units (He et al. 2016,
"Identity Mappings in Deep Residual Networks"): BN -> ReLU -> 3x3 conv -> BN -> ReLU -> 3x3 conv,
plus a 1x1 conv + BN shortcut where the shape changes. The stem unit is conv -> BN -> ReLU -> conv
plus shortcut (its input is the raw image, so it has no leading BN/ReLU). Each further encoder
level, and the bridge below them, starts with a stride-2 conv instead of a max-pool. Each decoder
level up-samples 2x, concatenates the skip and applies one residual unit; a 1x1 conv gives the
logits. Widths are features * 2^level: 64, 128, 256 encoder and a 512 bridge at the paper's
configuration (depth 3 = three stride-2 down-samplings, the third inside the bridge), decoder
256, 128, 64.
Choices and departures: the decoder up-samples with a parameter-free bilinear resize (the paper
says "up-sampling"; a resize keeps its 7.8M parameter budget, a transposed conv would not);
conv layers keep their biases (Keras default); no sigmoid at the end (the model returns logits).
Dropout (0 by default, not in the paper) is applied to the bridge output and after each skip
concatenation, as in the project's U-Net.
Defaults (features 64, depth 3) with 3 input channels and 1 class: 8,223,809 trainable
parameters and 9,216 batch-norm statistics (1 input channel: 8,222,529). The paper reports 7.8M
parameters, which matches 8,223,809 counted in units of 2^20.

ResUNet++: Jha et al. 2019, "ResUNet++: An Advanced Architecture for Medical Image
Segmentation" (IEEE ISM, arXiv:1911.07067), block order and widths checked against the authors'
code (DebeshJha/ResUNetPlusPlus, m_resunet.py and resunet++_pytorch.py):
  stem unit (width 16) -> SE; three stride-2 residual units (32, 64, 128), each -> SE;
  ASPP bridge (256); three decoder levels, each: attention gate on (encoder skip, decoder
  feature before up-sampling) -> 2x nearest up-sampling -> concatenate the skip -> residual unit
  (128, 64, 32); ASPP (16); 1x1 conv head.
ASPP follows the authors' code: parallel 3x3 convs (an undilated one plus dilation rates 6, 12,
18 = `aspp_rates`, the rates of both the Keras and the PyTorch code), each followed by BN, summed,
then a 1x1 conv; no ReLU. SE uses reduction ratio 8 and bias-free dense layers, as in the
authors' code.
Departures: (1) the attention gate ends in a sigmoid, so the map that multiplies the decoder
feature lies in [0, 1] as in attention U-Net (Oktay et al. 2018); the authors' code multiplies
by the unbounded conv output. (2) SE follows the stem and the encoder units only, as the paper
describes the encoding path; the authors' code also applies SE after every decoder residual unit
(`decoder_se=True` reproduces that). (3) The SE hidden width is max(1, channels // se_ratio) so
tiny test widths still work. (4) Dropout (0 by default) as in ResUNet above.
Defaults (features 16, depth 3) with 3 input channels and 1 class: 4,057,617 trainable
parameters and 7,392 batch-norm statistics (1 input channel: 4,057,297). With decoder_se=True:
4,062,993, exactly the authors' PyTorch model counted layer by layer.

Both use the Keras batch-norm constants from layers.py (both references are Keras models) and
pad any H, W to a multiple of 2^depth, cropping the logits back. Global pooling in SE sees the
zero padding, so for padded inputs the channel weights differ slightly from those of the
unpadded image.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from retina_jax.models import register
from retina_jax.models.layers import (BN_EPSILON, BN_MOMENTUM, Dropout, Identity, crop_to, he_normal,
                                      max_pool_2x2, pad_to_multiple)


def _conv(features: int, kernel: int, dtype: Any, name: str, strides: int = 1,
          dilation: int = 1) -> nn.Conv:
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                   kernel_dilation=(dilation, dilation), padding="SAME", kernel_init=he_normal,
                   dtype=dtype, name=name)


def _norm(x, *, batch_norm: bool, train: bool, dtype: Any, name: str):
    """Keras-constant batch norm, or nothing when the model is built without batch norm."""
    if not batch_norm:
        return x
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                        dtype=dtype, name=name)(x)


def _upsample2x(x, method: str):
    batch, height, width, channels = x.shape
    return jax.image.resize(x, (batch, 2 * height, 2 * width, channels), method)


class ResidualUnit(nn.Module):
    """Pre-activation residual unit; `stem=True` drops the leading BN -> ReLU (raw-image input).

    The first 3x3 conv and the shortcut carry `strides`; the shortcut is a 1x1 conv (+ BN) only
    where the stride or the channel count changes, otherwise the identity.
    """
    features: int
    strides: int = 1
    stem: bool = False
    batch_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        norm = dict(batch_norm=self.batch_norm, train=train, dtype=self.dtype)
        y = x if self.stem else nn.relu(_norm(x, name="bn0", **norm))
        y = _conv(self.features, 3, self.dtype, "conv0", strides=self.strides)(y)
        y = nn.relu(_norm(y, name="bn1", **norm))
        y = _conv(self.features, 3, self.dtype, "conv1")(y)
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = _conv(self.features, 1, self.dtype, "shortcut_conv", strides=self.strides)(x)
            shortcut = _norm(shortcut, name="shortcut_bn", **norm)
        return y + shortcut


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): x * sigmoid(W2 relu(W1 mean_hw(x))), per channel."""
    ratio: int = 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        squeezed = jnp.mean(x, axis=(1, 2), keepdims=True)
        hidden = nn.Dense(max(1, channels // self.ratio), use_bias=False, kernel_init=he_normal,
                          dtype=self.dtype, name="reduce")(squeezed)
        scale = nn.Dense(channels, use_bias=False, kernel_init=he_normal, dtype=self.dtype,
                         name="expand")(nn.relu(hidden))
        return x * nn.sigmoid(scale)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling as in the ResUNet++ code: an undilated 3x3 conv and one 3x3
    conv per dilation rate, each -> BN, summed, then a 1x1 conv to `features` channels."""
    features: int
    rates: tuple[int, ...] = (6, 12, 18)
    batch_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        total = 0.0
        for branch, rate in enumerate((1, *self.rates)):
            y = _conv(self.features, 3, self.dtype, f"conv{branch}", dilation=rate)(x)
            total = total + _norm(y, batch_norm=self.batch_norm, train=train, dtype=self.dtype,
                                  name=f"bn{branch}")
        return _conv(self.features, 1, self.dtype, "project")(total)


class AttentionGate(nn.Module):
    """ResUNet++ attention block: weights the decoder feature `x` (H/2 x W/2) by a map in [0, 1]
    computed from it and the 2x larger encoder skip.

    skip: BN -> ReLU -> 3x3 conv -> 2x2 max-pool; x: BN -> ReLU -> 3x3 conv; their sum:
    BN -> ReLU -> 3x3 conv -> sigmoid = the attention map (sown as intermediates/attention_map),
    one weight per position and channel of x.
    """
    batch_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, skip, x, *, train: bool):
        features = x.shape[-1]
        norm = dict(batch_norm=self.batch_norm, train=train, dtype=self.dtype)
        from_skip = _conv(features, 3, self.dtype, "skip_conv")(
            nn.relu(_norm(skip, name="skip_bn", **norm)))
        from_skip = max_pool_2x2(from_skip)
        from_x = _conv(features, 3, self.dtype, "x_conv")(nn.relu(_norm(x, name="x_bn", **norm)))
        combined = nn.relu(_norm(from_skip + from_x, name="sum_bn", **norm))
        attention = nn.sigmoid(_conv(features, 3, self.dtype, "attention_conv")(combined))
        self.sow("intermediates", "attention_map", attention)
        return x * attention


@register("resunet", input_shape=(224, 224, 3), paper="Zhang, Liu & Wang 2018, Deep Residual U-Net (arXiv:1711.10684)")
class ResUNet(nn.Module):
    """Deep Residual U-Net; `depth` stride-2 down-samplings, the last one inside the bridge."""
    num_classes: int = 1
    features: int = 64
    depth: int = 3
    dropout: float = 0.0
    batch_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, *, train: bool):
        if self.depth < 1:
            raise ValueError(f"ResUNet.depth must be at least 1, got {self.depth}.")
        x, input_size = pad_to_multiple(images, 2 ** self.depth)
        x = x.astype(self.dtype)
        dropout = Dropout(self.dropout, deterministic=not train)
        unit = dict(batch_norm=self.batch_norm, dtype=self.dtype)
        x = ResidualUnit(self.features, stem=True, name="stem", **unit)(x, train=train)
        skips = [x]
        for level in range(1, self.depth):
            x = ResidualUnit(self.features * 2 ** level, strides=2, name=f"encoder{level - 1}",
                             **unit)(x, train=train)
            skips.append(x)
        x = ResidualUnit(self.features * 2 ** self.depth, strides=2, name="bottleneck",
                         **unit)(x, train=train)
        x = dropout(x)
        for level in reversed(range(self.depth)):
            x = jnp.concatenate([_upsample2x(x, "bilinear"), skips[level]], axis=-1)
            x = ResidualUnit(self.features * 2 ** level, name=f"decoder{level}",
                             **unit)(dropout(x), train=train)
        x = Identity(name="pre_logits")(x)
        logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="head")(x)
        return crop_to(logits, input_size).astype(jnp.float32)


@register("resunet_pp", input_shape=(256, 256, 3), paper="Jha et al. 2019, ResUNet++ (arXiv:1911.07067)")
class ResUNetPlusPlus(nn.Module):
    """ResUNet++: residual units with SE, an ASPP bridge, attention-gated decoder, ASPP output."""
    num_classes: int = 1
    features: int = 16
    depth: int = 3
    dropout: float = 0.0
    batch_norm: bool = True
    aspp_rates: tuple[int, ...] = (6, 12, 18)
    se_ratio: int = 8
    decoder_se: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, *, train: bool):
        if self.depth < 1:
            raise ValueError(f"ResUNetPlusPlus.depth must be at least 1, got {self.depth}.")
        x, input_size = pad_to_multiple(images, 2 ** self.depth)
        x = x.astype(self.dtype)
        dropout = Dropout(self.dropout, deterministic=not train)
        unit = dict(batch_norm=self.batch_norm, dtype=self.dtype)
        x = ResidualUnit(self.features, stem=True, name="stem", **unit)(x, train=train)
        x = SqueezeExcite(self.se_ratio, dtype=self.dtype, name="stem_se")(x)
        skips = [x]
        for level in range(1, self.depth + 1):
            x = ResidualUnit(self.features * 2 ** level, strides=2, name=f"encoder{level - 1}",
                             **unit)(x, train=train)
            x = SqueezeExcite(self.se_ratio, dtype=self.dtype, name=f"encoder{level - 1}_se")(x)
            skips.append(x)
        x = ASPP(self.features * 2 ** (self.depth + 1), self.aspp_rates, name="bottleneck",
                 **unit)(x, train=train)
        x = dropout(x)
        # The deepest encoder output only feeds the bridge; the decoder fuses levels depth-1..0.
        for level in reversed(range(self.depth)):
            gated = AttentionGate(name=f"attention{level}", **unit)(skips[level], x, train=train)
            x = jnp.concatenate([_upsample2x(gated, "nearest"), skips[level]], axis=-1)
            x = ResidualUnit(self.features * 2 ** (level + 1), name=f"decoder{level}",
                             **unit)(dropout(x), train=train)
            if self.decoder_se:
                x = SqueezeExcite(self.se_ratio, dtype=self.dtype, name=f"decoder{level}_se")(x)
        x = ASPP(self.features, self.aspp_rates, name="output_aspp", **unit)(x, train=train)
        x = Identity(name="pre_logits")(x)
        logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="head")(x)
        return crop_to(logits, input_size).astype(jnp.float32)
