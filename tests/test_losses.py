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


def horizontal_bar(rows: slice, columns: slice = slice(None), height: int = 11, width: int = 12) -> jnp.ndarray:
    """A (1, height, width, 1) binary image, 1 on `rows` x `columns`."""
    image = np.zeros((1, height, width, 1), np.float32)
    image[0, rows, columns, 0] = 1.0
    return jnp.asarray(image)


def as_logits(binary: jnp.ndarray) -> jnp.ndarray:
    return jnp.where(binary > 0, 30.0, -30.0)


CENTRE_ROW = horizontal_bar(slice(5, 6))


@pytest.mark.parametrize("thickness", [1, 3, 5, 7, 21])
def test_soft_skeleton_of_a_bar_is_its_centre_row(thickness):
    bar = horizontal_bar(slice(12 - thickness // 2, 12 + thickness // 2 + 1), height=25)
    np.testing.assert_array_equal(losses.soft_skeleton(bar), horizontal_bar(slice(12, 13), height=25))


def test_soft_skeleton_reaches_radius_iterations_only():
    # 2 iterations thin a bar of radius 2 (5 rows) to its centre; one of radius 3 keeps no ridge.
    np.testing.assert_array_equal(losses.soft_skeleton(horizontal_bar(slice(3, 8)), iterations=2), CENTRE_ROW)
    assert float(jnp.sum(losses.soft_skeleton(horizontal_bar(slice(2, 9)), iterations=2))) == 0.0


def test_soft_skeleton_of_soft_values_stays_inside_them():
    probabilities = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1))
    skeleton = losses.soft_skeleton(probabilities)
    assert float(jnp.min(skeleton)) >= 0.0
    assert np.all(np.asarray(skeleton) <= np.asarray(probabilities) + 1e-6)


THICK_BAR = horizontal_bar(slice(4, 7))  # 3 rows of 12: its skeleton is the 12 pixels of row 5

CLDICE_CASES = {
    "perfect": (THICK_BAR, None, 0.0),
    # S(p) = 0: Tprec = (0 + 1) / (0 + 1) = 1; Tsens = (0 + 1) / (12 + 1): 1 - 2 (1/13) / (14/13)
    "empty": (jnp.zeros_like(THICK_BAR), None, 1 - 2 / 14),
    # The centreline alone: S(p) = p = row 5, inside y (Tprec 1), covering S(y) (Tsens 1). Soft
    # Dice would charge it for the 24 vessel pixels missed; clDice does not.
    "centreline_only": (CENTRE_ROW, None, 0.0),
    # Row 5 with a 4-pixel gap: S(p) = the 8 predicted pixels (Tprec 1); Tsens = (8 + 1) / (12 + 1)
    "broken": (horizontal_bar(slice(5, 6), slice(0, 4)) + horizontal_bar(slice(5, 6), slice(8, 12)), None,
               1 - 2 * (9 / 13) / (1 + 9 / 13)),
    # Outside the mask (columns 8-11) nothing counts: y is a bar ending at column 7, whose
    # skeleton stops a pixel short of that free end (row 5, columns 0-6), and p one ending at 5
    # (S(p) = columns 0-4, inside y: Tprec 1); Tsens = (6 + 1) / (7 + 1): 1 - 2 (7/8) / (15/8).
    "masked": (horizontal_bar(slice(4, 7), slice(0, 6)), horizontal_bar(slice(None), slice(0, 8)), 1 / 15),
}


@pytest.mark.parametrize("prediction, mask, expected", CLDICE_CASES.values(), ids=CLDICE_CASES.keys())
def test_cldice_loss(prediction, mask, expected):
    loss = losses.cldice_loss(as_logits(prediction), THICK_BAR, mask)
    assert float(loss) == pytest.approx(expected, abs=1e-6)


def test_cldice_loss_counts_a_vessel_by_length_where_dice_counts_its_area():
    labels = THICK_BAR
    centreline = as_logits(CENTRE_ROW)
    assert float(losses.soft_dice_loss(centreline, labels)) == pytest.approx(1 - 25 / 49, abs=1e-6)
    assert float(losses.cldice_loss(centreline, labels)) == pytest.approx(0.0, abs=1e-6)


def test_bce_dice_cldice_weighs_the_two_dice_terms_equally():
    logits = jax.random.normal(jax.random.key(3), THICK_BAR.shape)
    expected = (losses.binary_cross_entropy(logits, THICK_BAR) + 0.5 * losses.soft_dice_loss(logits, THICK_BAR)
                + 0.5 * losses.cldice_loss(logits, THICK_BAR))
    assert float(losses.bce_dice_cldice_loss(logits, THICK_BAR)) == pytest.approx(float(expected), rel=1e-6)


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
    assert losses.get_loss("bce_dice_cldice") is losses.bce_dice_cldice_loss


def test_get_loss_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"'focal'.*\['bce', 'bce_dice', 'bce_dice_cldice', 'cldice', 'dice'\]"):
        losses.get_loss("focal")
