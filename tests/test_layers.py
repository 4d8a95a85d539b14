"""Shared layers: the element-wise max-pool and the 16-bit dropout against flax's, and their statistics."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retina_jax.models.layers import Dropout, keep_mask, max_pool_2x2


def flax_max_pool(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2))


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 7, 9, 2), (1, 2, 2, 1)])
def test_max_pool_2x2_matches_nn_max_pool_and_its_gradient(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    cotangent = jax.random.normal(jax.random.key(1), flax_max_pool(x).shape)
    np.testing.assert_array_equal(max_pool_2x2(x), flax_max_pool(x))
    grad, = jax.vjp(max_pool_2x2, x)[1](cotangent)
    expected, = jax.vjp(flax_max_pool, x)[1](cotangent)
    np.testing.assert_array_equal(grad, expected)


@pytest.mark.parametrize("window", [[[1.0, 1.0], [0.0, 1.0]], [[0.0, 2.0], [2.0, 2.0]],
                                    [[0.0, 0.0], [3.0, 3.0]], [[0.0, 0.0], [0.0, 0.0]]])
def test_max_pool_2x2_gives_a_tied_maximum_gradient_to_the_first_as_nn_max_pool(window):
    x = jnp.array(window).reshape(1, 2, 2, 1)
    grad = jax.grad(lambda x: max_pool_2x2(x).sum())(x)
    np.testing.assert_array_equal(grad, jax.grad(lambda x: flax_max_pool(x).sum())(x))
    assert float(grad.sum()) == 1.0


def test_keep_mask_rounds_to_sixteen_bits_and_keeps_that_share():
    mask, keep_prob = keep_mask(jax.random.key(0), 0.95, (64, 100, 101))
    assert mask.shape == (64, 100, 101) and mask.dtype == jnp.bool_
    assert keep_prob == 62259 / 65536
    # 646,400 draws: the share kept is within 5 standard deviations (0.0014) of keep_prob.
    assert abs(float(mask.mean()) - keep_prob) < 5 * np.sqrt(keep_prob * (1 - keep_prob) / mask.size)


def test_keep_mask_halves_of_a_word_are_independent():
    mask, _ = keep_mask(jax.random.key(1), 0.5, (400_000, 2))
    pairs = np.asarray(mask)
    # Both halves of each 32-bit word: each of the 4 outcomes has probability 1/4.
    outcomes = np.bincount(pairs[:, 0] * 2 + pairs[:, 1], minlength=4) / len(pairs)
    np.testing.assert_allclose(outcomes, 0.25, atol=0.004)


@pytest.mark.parametrize("keep_prob,expected", [(0.0, False), (1.0, True)])
def test_keep_mask_extremes(keep_prob, expected):
    mask, rounded = keep_mask(jax.random.key(0), keep_prob, (3, 5))
    assert rounded == keep_prob and bool(mask.all() if expected else not mask.any())


def dropout(x, rate, seed=0, deterministic=False):
    return Dropout(rate).apply({}, x, deterministic=deterministic, rngs={"dropout": jax.random.key(seed)})


def test_dropout_zeroes_units_and_rescales_the_rest_by_the_rounded_keep_probability():
    x = jax.random.normal(jax.random.key(2), (4, 16, 16, 8)) + 5.0
    y = np.asarray(dropout(x, 0.3))
    kept = y != 0
    _, keep_prob = keep_mask(jax.random.key(0), 0.7, x.shape)
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / keep_prob, rtol=1e-6)
    assert 0.6 < kept.mean() < 0.8
    np.testing.assert_array_equal(dropout(x, 0.3), y)
    assert not np.array_equal(dropout(x, 0.3, seed=1), y)


def test_dropout_identity_in_evaluation_and_at_rate_zero_zeros_at_rate_one():
    x = jax.random.normal(jax.random.key(3), (2, 4, 4, 3))
    np.testing.assert_array_equal(dropout(x, 0.5, deterministic=True), x)
    np.testing.assert_array_equal(dropout(x, 0.0), x)
    np.testing.assert_array_equal(dropout(x, 1.0), jnp.zeros_like(x))


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_dropout_rejects_a_rate_outside_0_1(rate):
    with pytest.raises(ValueError, match="Dropout rate"):
        dropout(jnp.ones((1, 2, 2, 1)), rate)
