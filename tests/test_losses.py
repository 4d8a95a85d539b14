"""Hand-computed cases for retina_jax.losses."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retina_jax import losses


def as_image(values) -> jnp.ndarray:
    """A flat list of pixels as one (1, 1, n, 1) image."""
    return jnp.asarray(values, jnp.float32)[None, None, :, None]


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


BCE_CASES = {
    # sigmoid(0) = 1/2, so every pixel costs -log(1/2) = log 2 whatever its label.
    "zero_logits": ([0.0, 0.0], [1, 0], None, math.log(2)),
    # label 1: -log sigmoid(x) = softplus(-x); label 0: -log(1 - sigmoid(x)) = softplus(x).
    "mixed": ([2.0, -1.0], [1, 0], None, (softplus(-2.0) + softplus(-1.0)) / 2),
    # The masked-out pixel (cost softplus(5) ~ 5) must not enter the mean.
    "masked": ([0.0, 5.0], [1, 0], [1, 0], math.log(2)),
    "nothing_counted": ([0.0, 5.0], [1, 0], [0, 0], 0.0),
}


@pytest.mark.parametrize("logits, labels, mask, expected", BCE_CASES.values(),
                         ids=BCE_CASES.keys())
def test_binary_cross_entropy(logits, labels, mask, expected):
    mask = None if mask is None else as_image(mask)
    loss = losses.binary_cross_entropy(as_image(logits), as_image(labels), mask)
    assert float(loss) == pytest.approx(expected, rel=1e-6, abs=1e-7)


LABELS = [1, 0, 1, 1]   # 3 positives of 4 pixels
# Logits of +-30 give sigmoid 1 and ~1e-13, i.e. hard probabilities in float32.
PERFECT = [30.0, -30.0, 30.0, 30.0]
WRONG = [-30.0, 30.0, -30.0, -30.0]

DICE_CASES = {
    # I = 3, sum p = 3, sum y = 3: 1 - (6 + 1) / (6 + 1)
    "perfect": (PERFECT, None, 0.0),
    # I = 0, sum p = 1, sum y = 3: 1 - (0 + 1) / (4 + 1)
    "wrong": (WRONG, None, 1 - 1 / 5),
    # p = 1/2 everywhere: I = 3/2, sum p = 2, sum y = 3: 1 - (3 + 1) / (5 + 1)
    "half": ([0.0, 0.0, 0.0, 0.0], None, 1 - 4 / 6),
    # Only pixels 0 and 1 count: I = 0, sum p = 1, sum y = 1: 1 - 1 / 3
    "masked": (WRONG, [1, 1, 0, 0], 1 - 1 / 3),
    # Nothing counted: 1 - smooth / smooth
    "nothing_counted": (WRONG, [0, 0, 0, 0], 0.0),
}


@pytest.mark.parametrize("logits, mask, expected", DICE_CASES.values(), ids=DICE_CASES.keys())
def test_soft_dice_loss(logits, mask, expected):
    mask = None if mask is None else as_image(mask)
    loss = losses.soft_dice_loss(as_image(logits), as_image(LABELS), mask)
    assert float(loss) == pytest.approx(expected, abs=1e-6)


def test_soft_dice_smooth():
    # I = 0, sum p = 1, sum y = 3: 1 - (0 + 0.5) / (4 + 0.5)
    loss = losses.soft_dice_loss(as_image(WRONG), as_image(LABELS), smooth=0.5)
    assert float(loss) == pytest.approx(1 - 0.5 / 4.5, abs=1e-6)


def test_soft_dice_sums_over_the_batch():
    # Image 1: y = [1, 0], p = [1, 0]; image 2: y = [0, 0], p = [1, 1].
    # Pooled I = 1, sum p = 3, sum y = 1: 1 - 3 / 5 (the mean of per-image losses is 1/2).
    logits = jnp.asarray([[30.0, -30.0], [30.0, 30.0]])[:, None, :, None]
    labels = jnp.asarray([[1.0, 0.0], [0.0, 0.0]])[:, None, :, None]
    assert float(losses.soft_dice_loss(logits, labels)) == pytest.approx(1 - 3 / 5, abs=1e-6)


@pytest.mark.parametrize("mask", [None, [1, 0, 1, 0]])
def test_bce_dice_is_the_sum(mask):
    mask = None if mask is None else as_image(mask)
    logits, labels = as_image([1.5, -0.5, 0.25, -2.0]), as_image(LABELS)
    expected = (losses.binary_cross_entropy(logits, labels, mask)
                + losses.soft_dice_loss(logits, labels, mask))
    assert float(losses.bce_dice_loss(logits, labels, mask)) == pytest.approx(float(expected))


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
@pytest.mark.parametrize("mask", [None, [1, 1, 0, 0], [0, 0, 0, 0]], ids=["all", "half", "none"])
def test_jit_and_finite_gradients(name, mask):
    loss_fn = losses.get_loss(name)
    mask = None if mask is None else as_image(mask)
    logits, labels = as_image([1.5, -0.5, 30.0, -30.0]), as_image(LABELS)
    value, grad = jax.jit(jax.value_and_grad(loss_fn))(logits, labels, mask)
    assert float(value) == pytest.approx(float(loss_fn(logits, labels, mask)), rel=1e-6)
    assert grad.shape == logits.shape
    assert np.all(np.isfinite(grad))


def test_bfloat16_logits_give_a_float32_loss():
    logits = as_image([1.5, -0.5, 0.25, -2.0])
    for loss_fn in losses.LOSSES.values():
        loss = loss_fn(logits.astype(jnp.bfloat16), as_image(LABELS))
        assert loss.dtype == jnp.float32


def test_get_loss():
    assert losses.get_loss("bce") is losses.binary_cross_entropy
    assert losses.get_loss("dice") is losses.soft_dice_loss
    assert losses.get_loss("bce_dice") is losses.bce_dice_loss


def test_get_loss_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"'focal'.*\['bce', 'bce_dice', 'dice'\]"):
        losses.get_loss("focal")
