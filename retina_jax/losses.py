"""Losses for binary segmentation.

Every loss has the uniform signature `loss(logits, labels, mask=None) -> scalar`:

* `logits`: (B, H, W, 1) float, pre-sigmoid scores.
* `labels`: (B, H, W, 1) float in {0, 1}.
* `mask`:   (B, H, W, 1) float in {0, 1}, or None to count every pixel; 1 = the pixel
  counts, 0 = it is ignored (outside the field of view, a padded example).

All losses are pure `jax.numpy` and jit-able. They compute in float32 so that bfloat16
logits keep their precision when summed over millions of pixels.
"""
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[..., jax.Array]


def _as_float32(logits, labels, mask):
    if mask is None:
        mask = jnp.ones_like(labels)
    return (jnp.asarray(logits, jnp.float32), jnp.asarray(labels, jnp.float32),
            jnp.asarray(mask, jnp.float32))


def binary_cross_entropy(logits, labels, mask=None) -> jax.Array:
    """Mean of `optax.sigmoid_binary_cross_entropy` over the counted pixels.

    logits, labels, mask: (B, H, W, 1), see the module docstring.
    Returns a float32 scalar; 0.0 when no pixel is counted.
    """
    logits, labels, mask = _as_float32(logits, labels, mask)
    per_pixel = optax.sigmoid_binary_cross_entropy(logits, labels)
    num_counted = jnp.sum(mask)
    has_counted = num_counted > 0
    # Dividing by a safe count (not by 0 then masking) keeps the gradient finite too.
    safe_count = jnp.where(has_counted, num_counted, 1.0)
    return jnp.where(has_counted, jnp.sum(per_pixel * mask) / safe_count, 0.0)


def soft_dice_loss(logits, labels, mask=None, smooth: float = 1.0) -> jax.Array:
    """`1 - (2 sum(p*y) + smooth) / (sum(p) + sum(y) + smooth)` with `p = sigmoid(logits)`.

    The sums run over the whole batch and every counted pixel: one Dice for the batch,
    not a mean of per-image Dice. `smooth` > 0 makes an empty target with an empty
    prediction (or no counted pixel at all) a loss of 0.

    logits, labels, mask: (B, H, W, 1), see the module docstring.
    Returns a float32 scalar in [0, 1).
    """
    logits, labels, mask = _as_float32(logits, labels, mask)
    probs = jax.nn.sigmoid(logits) * mask
    labels = labels * mask
    intersection = jnp.sum(probs * labels)
    total = jnp.sum(probs) + jnp.sum(labels)
    return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


def bce_dice_loss(logits, labels, mask=None, smooth: float = 1.0) -> jax.Array:
    """`binary_cross_entropy + soft_dice_loss`; (B, H, W, 1) inputs as for both."""
    return (binary_cross_entropy(logits, labels, mask)
            + soft_dice_loss(logits, labels, mask, smooth=smooth))


LOSSES: dict[str, LossFn] = {
    "bce": binary_cross_entropy,
    "dice": soft_dice_loss,
    "bce_dice": bce_dice_loss,
}


def get_loss(name: str) -> LossFn:
    """The loss registered in `LOSSES` as `name`; ValueError for an unknown name."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"Unknown loss {name!r}; valid names: {sorted(LOSSES)}.") from None
