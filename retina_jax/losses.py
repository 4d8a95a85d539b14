"""Losses for binary segmentation.

Every loss has the uniform signature `loss(logits, labels, mask=None) -> scalar`:

* `logits`: (B, H, W, 1) float, pre-sigmoid scores.
* `labels`: (B, H, W, 1) float in {0, 1}.
* `mask`:   (B, H, W, 1) float in {0, 1}, or None to count every pixel; 1 = the pixel
  counts, 0 = it is ignored (outside the field of view, a padded example).

All losses are pure `jax.numpy` and jit-able. They compute in float32 so that bfloat16
logits keep their precision when summed over millions of pixels.

`bce_dice_cldice` adds the centreline Dice of Shit et al., "clDice - a novel topology-preserving
loss function for tubular structure segmentation", CVPR 2021: Dice between each mask and the
other's soft skeleton, which counts a vessel by its length, not its area, so a thin vessel missed
costs as much as a thick one of the same length.
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


# Iterations of the soft skeleton: each peels one pixel off every side of a structure, so
# structures up to this radius are thinned to their centreline. DRIVE's widest vessels are about
# 12 px across at its scale (radius 6); CHASE_DB1 is seen at that scale too.
SKELETON_ITERATIONS = 10
# bce_dice_cldice: the weight of clDice against soft Dice (the paper's alpha; 0.5 is its value
# for DRIVE-like data).
CLDICE_WEIGHT = 0.5


def _pool(image: jax.Array, window: tuple[int, int], reduce: str) -> jax.Array:
    """Max (`reduce="max"`) or min of (B, H, W, 1) `image` over a `window` centred on each pixel;
    pixels beyond the border do not take part."""
    sign = 1.0 if reduce == "max" else -1.0
    pooled = jax.lax.reduce_window(sign * image, -jnp.inf, jax.lax.max, (1, *window, 1), (1, 1, 1, 1),
                                   "SAME")
    return sign * pooled


def soft_erode(image: jax.Array) -> jax.Array:
    """Grey-level erosion of (B, H, W, 1) values in [0, 1] by the 3x3 cross (the pixel and its 4
    neighbours)."""
    return jnp.minimum(_pool(image, (3, 1), "min"), _pool(image, (1, 3), "min"))


def soft_dilate(image: jax.Array) -> jax.Array:
    """Grey-level dilation of (B, H, W, 1) values by the 3x3 square."""
    return _pool(image, (3, 3), "max")


def soft_skeleton(image: jax.Array, iterations: int = SKELETON_ITERATIONS) -> jax.Array:
    """The soft skeleton of (B, H, W, 1) values in [0, 1] (clDice's): at every erosion depth, what
    an opening removes (the ridge at that depth) is added to the skeleton. On a binary mask it is
    the centreline of every structure up to `iterations` pixels in radius; differentiable."""
    def ridge(current):
        return jax.nn.relu(current - soft_dilate(soft_erode(current)))

    skeleton = ridge(image)
    for _ in range(iterations):
        image = soft_erode(image)
        delta = ridge(image)
        skeleton = skeleton + jax.nn.relu(delta - skeleton * delta)
    return skeleton


def cldice_loss(logits, labels, mask=None, smooth: float = 1.0) -> jax.Array:
    """`1 - 2 Tprec Tsens / (Tprec + Tsens)`, with `p = sigmoid(logits)` and soft skeletons S:
    Tprec = (sum(S(p) y) + smooth) / (sum(S(p)) + smooth), the share of the predicted centreline
    inside the vessels; Tsens = (sum(S(y) p) + smooth) / (sum(S(y)) + smooth), the share of the
    vessels' centreline predicted. Sums over the whole batch and the counted pixels, as in
    `soft_dice_loss`; pixels outside `mask` are background to both skeletons.

    logits, labels, mask: (B, H, W, 1), see the module docstring.
    Returns a float32 scalar in [0, 1).
    """
    logits, labels, mask = _as_float32(logits, labels, mask)
    probs = jax.nn.sigmoid(logits) * mask
    labels = labels * mask
    predicted_skeleton, true_skeleton = soft_skeleton(probs), soft_skeleton(labels)
    precision = (jnp.sum(predicted_skeleton * labels) + smooth) / (jnp.sum(predicted_skeleton) + smooth)
    sensitivity = (jnp.sum(true_skeleton * probs) + smooth) / (jnp.sum(true_skeleton) + smooth)
    return 1.0 - 2.0 * precision * sensitivity / (precision + sensitivity)


def bce_dice_cldice_loss(logits, labels, mask=None, smooth: float = 1.0) -> jax.Array:
    """`binary_cross_entropy + (1 - CLDICE_WEIGHT) soft_dice_loss + CLDICE_WEIGHT cldice_loss`:
    bce_dice with half its Dice term on the centreline."""
    return (binary_cross_entropy(logits, labels, mask)
            + (1.0 - CLDICE_WEIGHT) * soft_dice_loss(logits, labels, mask, smooth=smooth)
            + CLDICE_WEIGHT * cldice_loss(logits, labels, mask, smooth=smooth))


LOSSES: dict[str, LossFn] = {
    "bce": binary_cross_entropy,
    "dice": soft_dice_loss,
    "bce_dice": bce_dice_loss,
    "cldice": cldice_loss,
    "bce_dice_cldice": bce_dice_cldice_loss,
}


def get_loss(name: str) -> LossFn:
    """The loss registered in `LOSSES` as `name`; ValueError for an unknown name."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"Unknown loss {name!r}; valid names: {sorted(LOSSES)}.") from None
