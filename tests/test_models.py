import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retina_jax import models


def count(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def test_unet_defaults_match_seed_keras_model():
    model = models.get_model("unet")
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 1)),
                                                  train=False))
    assert count(variables["params"]) == 2_161_361
    assert count(variables["batch_stats"]) == 2_944


@pytest.mark.parametrize("height,width,channels", [(37, 45, 3), (64, 64, 1), (17, 8, 2)])
@pytest.mark.parametrize("upsample", ["transpose", "resize"])
def test_unet_output_shape_for_any_input_size(height, width, channels, upsample):
    model = models.get_model("unet", num_classes=2, features=4, depth=3, upsample=upsample)
    images = jnp.ones((2, height, width, channels))
    variables = model.init(jax.random.key(0), images, train=False)
    logits = model.apply(variables, images, train=False)
    assert logits.shape == (2, height, width, 2)
    assert logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()


def test_unet_pads_odd_sizes_with_zeros_and_crops_back():
    model = models.get_model("unet", features=4, depth=2, dropout=0.0)
    images = jax.random.normal(jax.random.key(1), (1, 15, 13, 1))
    variables = model.init(jax.random.key(0), images, train=False)
    zero_padded = jnp.pad(images, ((0, 0), (0, 1), (0, 3), (0, 0)))  # to multiples of 2^2
    expected = model.apply(variables, zero_padded, train=False)[:, :15, :13]
    np.testing.assert_allclose(model.apply(variables, images, train=False), expected, atol=1e-6)


def test_unet_train_mode_updates_batch_stats_and_uses_dropout():
    model = models.get_model("unet", features=4, depth=2, dropout=0.5)
    images = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
    variables = model.init(jax.random.key(0), images, train=False)
    out_a, updates = model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(1)},
                                 mutable=["batch_stats"])
    out_b, _ = model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(2)},
                           mutable=["batch_stats"])
    assert not np.allclose(out_a, out_b)
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(updates["batch_stats"]),
                                                     jax.tree.leaves(variables["batch_stats"])))


def test_registry_lists_models_and_rejects_unknown_names_and_arguments():
    assert "unet" in models.available()
    with pytest.raises(ValueError, match="available models: .*unet"):
        models.get_model("unet_plusplus")
    with pytest.raises(ValueError, match="unknown arguments \\['featurez'\\]"):
        models.get_model("unet", featurez=8)


def test_unet_rejects_unknown_upsampling():
    model = models.get_model("unet", upsample="pixelshuffle")
    with pytest.raises(ValueError, match="upsample"):
        model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)), train=False)


def test_unet_side_heads_sow_every_level_at_input_size_and_leave_the_output_unchanged():
    images = jax.random.normal(jax.random.key(1), (2, 20, 28, 1))
    plain = models.get_model("unet", features=8, depth=4, dropout=0.0)
    with_sides = models.get_model("unet", features=8, depth=4, dropout=0.0, side_heads=True)
    variables = with_sides.init(jax.random.key(0), images, train=False)
    assert count(variables["params"]) - count(plain.init(jax.random.key(0), images, train=False)["params"]) \
        == (64 + 1) + (32 + 1) + (16 + 1)
    logits, state = with_sides.apply(variables, images, train=False, mutable=["intermediates"])
    sides = state["intermediates"]["side_logits"]
    assert len(sides) == 4 and all(side.shape == (2, 20, 28, 1) for side in sides)
    np.testing.assert_array_equal(sides[-1], logits)
    assert not any(np.allclose(side, logits, atol=1e-3) for side in sides[:-1])
    without_side_heads = {key: value for key, value in variables["params"].items()
                          if not key.startswith("side_head")}
    np.testing.assert_array_equal(
        plain.apply({"params": without_side_heads, "batch_stats": variables["batch_stats"]}, images,
                    train=False), logits)
