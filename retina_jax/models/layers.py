"""Building blocks shared by the models."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Keras defaults, which the seed notebooks trained with.
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3
he_normal = nn.initializers.he_normal()


def keep_mask(key: jax.Array, keep_prob: float, shape: tuple[int, ...]) -> tuple[jax.Array, float]:
    """A boolean mask of `shape`, each entry True with probability `keep_prob` rounded to a
    multiple of 2^-16, and that rounded probability.

    Each 32-bit threefry word is split into two 16-bit draws along the last axis: random bits
    cost a fixed time per word, and the U-Net's eight dropouts drawing one word per unit
    (`jax.random.bernoulli`) took 13% of its width-16 train step on a 2-core CPU. The rounding
    moves 0.95 to 0.949997."""
    if not 0.0 <= keep_prob <= 1.0:
        raise ValueError(f"keep_prob must be in [0, 1], got {keep_prob}.")
    threshold = round(keep_prob * 2 ** 16)
    *leading, last = shape
    words = jax.random.bits(key, (*leading, (last + 1) // 2), jnp.uint32)
    draws = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(*leading, -1)[..., :last]
    return draws.astype(jnp.uint32) < threshold, threshold / 2 ** 16


class Dropout(nn.Module):
    """Inverted dropout, as `nn.Dropout` (kept units scaled by 1 / keep probability; the
    identity when `deterministic`; the "dropout" rng collection), at half the random bits a
    unit (`keep_mask`)."""
    rate: float
    deterministic: bool | None = None

    @nn.compact
    def __call__(self, x, deterministic: bool | None = None):
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"Dropout rate must be in [0, 1], got {self.rate}.")
        if deterministic or self.rate == 0.0:
            return x
        keep, keep_prob = keep_mask(self.make_rng("dropout"), 1.0 - self.rate, x.shape)
        if keep_prob == 0.0:
            return jnp.zeros_like(x)
        return jnp.where(keep, x / keep_prob, 0).astype(x.dtype)


@jax.custom_vjp
def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """`nn.max_pool(x, (2, 2), strides=(2, 2))` of (B, H, W, C) maps (an odd last row or column
    is dropped, as there), with the same gradient (all of it to the first maximum of each window,
    row by row), computed element-wise: the forward pass records which element of each window it
    took, the backward pass routes the gradient there. `nn.max_pool`'s gradient is a windowed
    arg-max over four index arrays and a scatter, slow on XLA:CPU.

    The choice is recorded rather than re-derived in the backward pass: a `jnp.max` over the
    window axes, whose gradient compares the input with the maximum again and divides by the
    number of matches, gave NaN gradients after a few steps of the smoke U-Net
    (tests/test_train.py)."""
    return _max_pool_2x2_fwd(x)[0]


def _max_pool_2x2_fwd(x):
    batch, height, width, channels = x.shape
    windows = x[:, : height - height % 2, : width - width % 2].reshape(
        batch, height // 2, 2, width // 2, 2, channels)
    c0, c1, c2, c3 = (windows[:, :, i, :, j] for i in (0, 1) for j in (0, 1))
    # The first maximum in window order (a tie goes to the earlier element, as in nn.max_pool).
    first0 = ~(c0 < c1) & ~(c0 < c2) & ~(c0 < c3)
    first1 = ~first0 & ~(c1 < c2) & ~(c1 < c3)
    first2 = ~first0 & ~first1 & ~(c2 < c3)
    first3 = ~(first0 | first1 | first2)
    pooled = jnp.where(first0, c0, jnp.where(first1, c1, jnp.where(first2, c2, c3)))
    taken = jnp.stack([jnp.stack([first0, first1], axis=3), jnp.stack([first2, first3], axis=3)], axis=2)
    return pooled, _windows_to_map(taken, height, width)


def _max_pool_2x2_bwd(taken, grad):
    batch, height, width, channels = taken.shape
    spread = jnp.broadcast_to(grad[:, :, None, :, None, :], (batch, height // 2, 2, width // 2, 2, channels))
    return (jnp.where(taken, _windows_to_map(spread, height, width), 0).astype(grad.dtype),)


def _windows_to_map(windows, height, width):
    """(B, H // 2, 2, W // 2, 2, C) window elements as the (B, height, width, C) map they tile; an
    odd last row or column, in no window, is zero (False)."""
    batch, channels = windows.shape[0], windows.shape[-1]
    tiled = windows.reshape(batch, height - height % 2, width - width % 2, channels)
    return jnp.pad(tiled, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)))


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al., NeurIPS 2018): in training, zeroes `block_size` x `block_size`
    squares of each (B, H, W, C) feature map, independently per example and channel, seeded at
    the paper's rate for dropping a share `rate` of the units (overlapping squares and the map's
    border make the share somewhat less: 0.165 for 0.18 on 64x64 maps with 7x7 squares), and
    rescales the kept units by (units / kept units) of the batch; the identity when
    `deterministic`. Dropping whole squares removes the neighbours from which plain dropout's
    dropped units can be restored, so it regularises convolutional features (SD-Unet and
    SA-UNet use it for retinal vessels).

    Square centres are drawn only where a whole square fits; a square larger than the map
    shrinks to the largest odd size that fits it. Uses the "dropout" rng collection.
    """
    rate: float
    block_size: int = 7
    deterministic: bool | None = None

    @nn.compact
    def __call__(self, x, deterministic: bool | None = None):
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"DropBlock rate must be in [0, 1), got {self.rate}.")
        if self.block_size < 1 or self.block_size % 2 == 0:
            raise ValueError(f"DropBlock block_size must be a positive odd number, got {self.block_size}.")
        if deterministic or self.rate == 0.0:
            return x
        _, height, width, _ = x.shape
        size = min(self.block_size, height - (1 - height % 2), width - (1 - width % 2))
        # The paper's gamma: `rate` of the units over the size^2 units a square drops, with
        # centres only in the (height - size + 1) x (width - size + 1) region where squares fit.
        seed_rate = (self.rate / size ** 2 * height * width
                     / ((height - size + 1) * (width - size + 1)))
        half = size // 2
        fits = jnp.zeros((height, width), bool).at[half:height - half, half:width - half].set(True)
        seeds = jax.random.bernoulli(self.make_rng("dropout"), seed_rate, x.shape) & fits[None, :, :, None]
        dropped = seeds.astype(jnp.float32)
        for window in ((1, size, 1, 1), (1, 1, size, 1)):  # separable: ~25x faster than one square
            dropped = jax.lax.reduce_window(dropped, 0.0, jax.lax.max, window, (1, 1, 1, 1), "SAME")
        keep = 1.0 - dropped
        scale = keep.size / jnp.maximum(jnp.sum(keep), 1.0)
        return x * (keep * scale).astype(x.dtype)


class ConvBlock(nn.Module):
    """`num_convs` x [3x3 conv -> (DropBlock) -> (batch norm) -> ReLU]; DropBlock (SA-UNet's
    place for it) only when `dropblock` > 0."""
    features: int
    num_convs: int = 2
    batch_norm: bool = True
    dropblock: float = 0.0
    dropblock_size: int = 7
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        for i in range(self.num_convs):
            x = nn.Conv(self.features, (3, 3), padding="SAME", kernel_init=he_normal,
                        dtype=self.dtype, name=f"conv{i}")(x)
            if self.dropblock:
                x = DropBlock(self.dropblock, self.dropblock_size, deterministic=not train)(x)
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
