"""DropBlock: whole squares dropped at the paper's rate, kept units rescaled, training only."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from retina_jax import models
from retina_jax.models.layers import DropBlock


def drop(x, rate, block_size, seed=0, deterministic=False):
    return DropBlock(rate, block_size).apply({}, x, deterministic=deterministic,
                                             rngs={"dropout": jax.random.key(seed)})


def union_of_squares(dropped: np.ndarray, size: int) -> np.ndarray:
    """The units of (B, H, W, C) `dropped` that lie in a size x size square of dropped units."""
    whole = sliding_window_view(dropped, (size, size), axis=(1, 2)).all(axis=(-2, -1))
    covered = np.zeros_like(dropped)
    for b, i, j, c in zip(*np.nonzero(whole)):
        covered[b, i:i + size, j:j + size, c] = True
    return covered


def test_identity_in_evaluation_and_at_rate_zero():
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    np.testing.assert_array_equal(drop(x, 0.3, 5, deterministic=True), x)
    np.testing.assert_array_equal(drop(x, 0.0, 5), x)


def test_drops_whole_squares_per_channel_and_rescales_the_kept_units():
    x = jnp.ones((4, 32, 32, 2))
    out = np.asarray(drop(x, 0.2, 5, seed=1))
    dropped = out == 0
    assert dropped.any() and (union_of_squares(dropped, 5) == dropped).all()
    assert not (dropped[..., 0] == dropped[..., 1]).all()  # each channel its own squares
    np.testing.assert_allclose(out[~dropped], x.size / np.sum(~dropped), rtol=1e-6)
    np.testing.assert_allclose(out.mean(), 1.0, rtol=1e-6)


def expected_dropped_share(rate: float, size: int, height: int, width: int) -> float:
    """The paper's seed rate, centres only where a square fits: a unit is dropped unless every
    centre within reach of it stays unseeded."""
    seed_rate = rate / size ** 2 * height * width / ((height - size + 1) * (width - size + 1))

    def centres_in_reach(length):
        half = size // 2
        return np.array([sum(abs(centre - i) <= half for centre in range(half, length - half))
                         for i in range(length)])

    reach = np.outer(centres_in_reach(height), centres_in_reach(width))
    return float(np.mean(1 - (1 - seed_rate) ** reach))


@pytest.mark.parametrize("rate,size,height", [(0.18, 7, 64), (0.1, 3, 24), (0.3, 7, 4), (0.2, 7, 2)])
def test_drops_the_share_the_seed_rate_gives(rate, size, height):
    # Maps smaller than the square shrink it to the largest odd size that fits (4 -> 3, 2 -> 1).
    fitted = min(size, height - (1 - height % 2))
    expected = expected_dropped_share(rate, fitted, height, height)
    batch = 64 * (64 // height) ** 2  # ~4 million units whatever the map size
    out = np.asarray(drop(jnp.ones((batch, height, height, 16)), rate, size, seed=2))
    assert np.mean(out == 0) == pytest.approx(expected, abs=0.004)
    if fitted > 1:
        assert (union_of_squares(out == 0, fitted) == (out == 0)).all()
    if height == 64:  # the border loses some: 0.165 where the formula aims at 0.18
        assert expected == pytest.approx(0.165, abs=0.002)


@pytest.mark.parametrize("rate,size", [(1.0, 5), (-0.1, 5), (0.1, 4), (0.1, 0)])
def test_rejects_bad_arguments(rate, size):
    with pytest.raises(ValueError, match="DropBlock"):
        drop(jnp.ones((1, 8, 8, 1)), rate, size)


def test_unet_dropblock_acts_in_training_only_and_adds_no_parameters():
    images = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
    plain = models.get_model("unet", features=4, depth=2, dropout=0.0)
    blocked = models.get_model("unet", features=4, depth=2, dropout=0.0, dropblock=0.3, dropblock_size=3)
    variables = plain.init(jax.random.key(0), images, train=False)
    assert jax.tree.structure(blocked.init(jax.random.key(0), images, train=False)) == jax.tree.structure(variables)
    np.testing.assert_array_equal(blocked.apply(variables, images, train=False),
                                  plain.apply(variables, images, train=False))

    def train_logits(model, seed):
        return model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(seed)},
                           mutable=["batch_stats"])[0]

    np.testing.assert_array_equal(train_logits(plain, 1), train_logits(plain, 2))
    assert not np.allclose(train_logits(blocked, 1), train_logits(blocked, 2))
