"""ResNet classifiers (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016)
and the seed's ResNet-34 U-Net for segmentation.

Classifiers `resnet18`, `resnet34` (basic blocks, 2-2-2-2 / 3-4-6-3) and `resnet50` (bottleneck
blocks 3-4-6-3, torchvision "v1.5": the stride sits on the 3x3 conv) follow torchvision exactly:
7x7/2 stem conv + BN + ReLU, 3x3/2 max-pool, four stages (features x1, x2, x4, x8; every stage
after the first halves the resolution), global average pool, Dense head. Convs carry no bias
(BN follows), shortcuts are 1x1 conv + BN where the shape changes. With 1000 classes and 3
input channels the trainable parameters are exactly torchvision's:
  resnet18 11,689,512 (9,600 batch stats), resnet34 21,797,672 (17,024),
  resnet50 25,557,032 (53,120).
The Grad-CAM hook `pre_logits` holds the last (B, h, w, C) feature map, just before the global
pool: Grad-CAM needs spatial activations, and the pool is linear, so nothing is lost.

`resnet34_unet` is the seed's "modified U-Net" (notebook "OCT Segmentation.ipynb" of
KHEERSAGAR-PATEL/Deep-Neural-Network-based-Retinal-Disease-Classifier-using-OCT-Scans):
a ResNet-34 encoder and a U-Net decoder whose five stages each double the resolution with
bilinear up-sampling, concatenate the encoder skip of that resolution (layer3 1/16, layer2 1/8,
layer1 1/4, stem 1/2; the last, full-resolution stage has none) and apply two
3x3 conv + BN + ReLU with (256, 128, 64, 32, 16) features; a 1x1 "scoring" conv after every
decoder stage gives side logits, which are up-sampled to the input size and sown as
"side_logits" (coarsest first; the fifth is the full-resolution head, i.e. the returned logits,
so a deep-supervision loss can average over all five). Inputs are zero-padded to a multiple of
32 and the output cropped back. Defaults (1 input channel, 1 class): 24,430,453 trainable
parameters, 19,008 batch stats (3 input channels: 24,436,725).
Deliberate departures from the notebook: its encoder is a hand-written approximation of
ResNet-34 (stride-2 3x3 convs instead of the max-pool, one block instance re-applied); here it is
the real torchvision ResNet-34 encoder (so ImageNet weights could be loaded); bilinear
up-sampling is half-pixel (jax.image.resize), not align_corners=True; convs before BN drop
their bias; heads return logits, not softmax.

BatchNorm uses PyTorch's defaults (momentum 0.1 in torch = 0.9 in flax, eps 1e-5), as the
torchvision reference and the seed's PyTorch notebook do.
"""
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from retina_jax.models import register
from retina_jax.models.layers import Dropout, Identity, crop_to, pad_to_multiple

# PyTorch BatchNorm2d defaults (torch momentum 0.1 == flax momentum 0.9).
TORCH_BN_MOMENTUM = 0.9
TORCH_BN_EPSILON = 1e-5
# torchvision's ResNet conv init: kaiming_normal_(mode="fan_out", nonlinearity="relu").
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvNorm(nn.Module):
    """Conv (torch-style symmetric padding k//2) -> BatchNorm; no conv bias when BN follows."""
    features: int
    kernel_size: int
    strides: int = 1
    batch_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        pad = self.kernel_size // 2
        x = nn.Conv(self.features, (self.kernel_size,) * 2, (self.strides,) * 2,
                    padding=((pad, pad), (pad, pad)), use_bias=not self.batch_norm,
                    kernel_init=kaiming_fan_out, dtype=self.dtype, name="conv")(x)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=TORCH_BN_MOMENTUM,
                             epsilon=TORCH_BN_EPSILON, dtype=self.dtype, name="bn")(x)
        return x


class BasicBlock(nn.Module):
    """Two 3x3 convs; the first carries the stride."""
    features: int
    strides: int = 1
    batch_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        conv = dict(batch_norm=self.batch_norm, dtype=self.dtype)
        y = nn.relu(ConvNorm(self.features, 3, self.strides, **conv, name="conv0")(x, train=train))
        y = ConvNorm(self.features, 3, **conv, name="conv1")(y, train=train)
        return nn.relu(y + _shortcut(x, y, self.strides, conv, train))


class BottleneckBlock(nn.Module):
    """1x1 reduce -> 3x3 (strided, torchvision v1.5) -> 1x1 expand to 4x features."""
    features: int
    strides: int = 1
    batch_norm: bool = True
    dtype: Any = jnp.float32
    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x, *, train: bool):
        conv = dict(batch_norm=self.batch_norm, dtype=self.dtype)
        y = nn.relu(ConvNorm(self.features, 1, **conv, name="conv0")(x, train=train))
        y = nn.relu(ConvNorm(self.features, 3, self.strides, **conv, name="conv1")(y, train=train))
        y = ConvNorm(self.features * self.expansion, 1, **conv, name="conv2")(y, train=train)
        return nn.relu(y + _shortcut(x, y, self.strides, conv, train))


def _shortcut(x, y, strides: int, conv: dict, train: bool):
    """Identity, or a 1x1 conv + BN "projection" (in the calling block) where shapes differ."""
    if x.shape == y.shape:
        return x
    return ConvNorm(y.shape[-1], 1, strides, **conv, name="projection")(x, train=train)


class ResNetStage(nn.Module):
    block: type[nn.Module]
    num_blocks: int
    features: int
    strides: int
    batch_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        for i in range(self.num_blocks):
            strides = self.strides if i == 0 else 1
            x = self.block(self.features, strides, self.batch_norm, self.dtype, name=f"block{i}")(
                x, train=train)
        return x


def resnet_encoder(x, *, stage_sizes: Sequence[int], block: type[nn.Module], features: int,
                   batch_norm: bool, dtype: Any, train: bool) -> list[jnp.ndarray]:
    """The ResNet trunk, built inside the calling module ("stem", "encoder0".."encoder3").

    Shared by the classifiers and the U-Net so that their encoder parameters have the same
    names and shapes. Returns the stem activation (1/2 resolution, before the max-pool) and
    every stage's output (1/4, 1/8, 1/16, 1/32).
    """
    stem = nn.relu(ConvNorm(features, 7, 2, batch_norm, dtype, name="stem")(x, train=train))
    x = nn.max_pool(stem, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    outputs = [stem]
    for i, num_blocks in enumerate(stage_sizes):
        x = ResNetStage(block, num_blocks, features * 2 ** i, 1 if i == 0 else 2, batch_norm, dtype,
                        name=f"encoder{i}")(x, train=train)
        outputs.append(x)
    return outputs


class ResNet(nn.Module):
    """ResNet classifier; the registered subclasses fix the depth."""
    num_classes: int = 1000
    features: int = 64
    dtype: Any = jnp.float32
    stage_sizes: ClassVar[Sequence[int]] = ()
    block: ClassVar[type[nn.Module]] = BasicBlock

    @nn.compact
    def __call__(self, images, *, train: bool):
        x = resnet_encoder(images.astype(self.dtype), stage_sizes=self.stage_sizes,
                           block=self.block, features=self.features, batch_norm=True,
                           dtype=self.dtype, train=train)[-1]
        x = Identity(name="pre_logits")(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


@register("resnet18", task="classification", input_shape=(224, 224, 3), paper="He et al. 2016, ResNet (torchvision layout)")
class ResNet18(ResNet):
    stage_sizes = (2, 2, 2, 2)
    block = BasicBlock


@register("resnet34", task="classification", input_shape=(224, 224, 3), paper="He et al. 2016, ResNet (torchvision layout)")
class ResNet34(ResNet):
    stage_sizes = (3, 4, 6, 3)
    block = BasicBlock


@register("resnet50", task="classification", input_shape=(224, 224, 3), paper="He et al. 2016, ResNet (torchvision v1.5 layout)")
class ResNet50(ResNet):
    stage_sizes = (3, 4, 6, 3)
    block = BottleneckBlock


class DecoderBlock(nn.Module):
    """Two 3x3 conv -> (BN) -> ReLU, as the notebook's `double_conv`."""
    features: int
    batch_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        for i in range(2):
            x = nn.relu(ConvNorm(self.features, 3, 1, self.batch_norm, self.dtype, name=f"conv{i}")(
                x, train=train))
        return x


def _resize(x, height: int, width: int):
    if x.shape[1:3] == (height, width):
        return x
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), "bilinear")


@register("resnet34_unet", input_shape=(512, 512, 3), paper="ResNet-34 encoder U-Net with scoring heads (seed OCT notebook)")
class ResNet34UNet(nn.Module):
    num_classes: int = 1
    features: int = 64  # encoder stem width; the stages use x1, x2, x4, x8
    # One width per decoder stage, deepest first: 1/16, 1/8, 1/4, 1/2, full resolution.
    decoder_features: tuple[int, ...] = (256, 128, 64, 32, 16)
    dropout: float = 0.0  # after each up-sample + skip concatenation
    batch_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, *, train: bool):
        if len(self.decoder_features) != 5:
            raise ValueError("ResNet34UNet.decoder_features needs one width per decoder stage (5), "
                             f"got {self.decoder_features!r}.")
        x, input_size = pad_to_multiple(images, 32)
        padded_height, padded_width = x.shape[1:3]
        stem, *stages = resnet_encoder(x.astype(self.dtype), stage_sizes=(3, 4, 6, 3),
                                       block=BasicBlock, features=self.features,
                                       batch_norm=self.batch_norm, dtype=self.dtype, train=train)
        # Skips by decoder stage: layer3 (1/16), layer2 (1/8), layer1 (1/4), stem (1/2), none.
        skips = [stages[2], stages[1], stages[0], stem, None]
        x = stages[3]
        dropout = Dropout(self.dropout, deterministic=not train)
        last = len(self.decoder_features) - 1
        for level, (features, skip) in enumerate(zip(self.decoder_features, skips)):
            x = _resize(x, 2 * x.shape[1], 2 * x.shape[2])
            if skip is not None:
                x = jnp.concatenate([x, skip], axis=-1)
            x = DecoderBlock(features, self.batch_norm, self.dtype, name=f"decoder{level}")(
                dropout(x), train=train)
            if level == last:
                x = Identity(name="pre_logits")(x)
            score = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype,
                            name="head" if level == last else f"score{level}")(x)
            side = crop_to(_resize(score, padded_height, padded_width), input_size)
            side = side.astype(jnp.float32)
            self.sow("intermediates", "side_logits", side)
        return side
