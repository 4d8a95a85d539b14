"""UNet++ deep-supervision modes and the seed hourglass autoencoder's structure and size."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import retina_jax.models.hourglass  # noqa: F401  (registers "hourglass")
import retina_jax.models.unet_plus_plus  # noqa: F401  (registers "unet_plus_plus")
from retina_jax import models

TINY_UNETPP = dict(features=4, depth=2)
TINY_HOURGLASS = dict(features=2, depth=2)


def count(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def abstract_variables(model, shape):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def init(model, images):
    # Jitted: eager init compiles every initializer separately, which dominates these tests.
    return jax.jit(lambda key: model.init(key, images, train=False))(jax.random.key(0))


UNETPP_IMAGES_SHAPE = (2, 37, 45, 3)


@functools.cache
def unetpp_variables(mode: str):
    model = models.get_model("unet_plus_plus", deep_supervision=mode, **TINY_UNETPP)
    return init(model, jnp.zeros(UNETPP_IMAGES_SHAPE))


def unetpp_outputs(mode: str):
    """Logits and intermediates of the tiny UNet++ on a 37x45x3 batch.

    "average" and "last" have the same heads, so they share one set of variables.
    """
    variables = unetpp_variables("average" if mode == "last" else mode)
    model = models.get_model("unet_plus_plus", deep_supervision=mode, **TINY_UNETPP)
    images = jax.random.normal(jax.random.key(1), UNETPP_IMAGES_SHAPE)
    logits, state = model.apply(variables, images, train=False, mutable=["intermediates"])
    return logits, state["intermediates"]


def test_unetpp_average_returns_the_mean_of_the_sown_side_logits():
    logits, intermediates = unetpp_outputs("average")
    sides = intermediates["side_logits"]
    assert len(sides) == TINY_UNETPP["depth"]
    assert all(side.shape == (2, 37, 45, 1) and side.dtype == jnp.float32 for side in sides)
    assert not np.allclose(sides[0], sides[-1])  # the average is not trivially one head
    np.testing.assert_allclose(logits, np.mean(np.stack(sides), axis=0), rtol=1e-6, atol=1e-6)


def test_unetpp_last_returns_the_last_sown_side_logits():
    logits, intermediates = unetpp_outputs("last")
    sides = intermediates["side_logits"]
    assert len(sides) == TINY_UNETPP["depth"]
    np.testing.assert_array_equal(logits, sides[-1])
    # Same variables, same sides: "average" differs from "last" only in the returned value.
    average_sides = unetpp_outputs("average")[1]["side_logits"]
    np.testing.assert_array_equal(np.stack(sides), np.stack(average_sides))


def test_unetpp_without_deep_supervision_sows_no_side_logits_and_has_one_head():
    _, intermediates = unetpp_outputs("none")
    assert "side_logits" not in intermediates
    params = abstract_variables(models.get_model("unet_plus_plus", **TINY_UNETPP),
                                (1, 16, 16, 1))["params"]
    assert "head" in params and not any(name.startswith("side_head") for name in params)


def test_unetpp_rejects_unknown_deep_supervision():
    model = models.get_model("unet_plus_plus", deep_supervision="mean", **TINY_UNETPP)
    with pytest.raises(ValueError, match="deep_supervision"):
        model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)), train=False)


def test_unetpp_full_width_parameter_counts():
    variables = abstract_variables(models.get_model("unet_plus_plus"), (1, 64, 64, 1))
    assert count(variables["params"]) == 2_551_969
    assert count(variables["batch_stats"]) == 3_648
    # Three extra 1x1 heads (16 weights + 1 bias each) on X^{0,1..3}.
    supervised = abstract_variables(models.get_model("unet_plus_plus", deep_supervision="average"),
                                    (1, 64, 64, 1))
    assert count(supervised["params"]) == 2_551_969 + 3 * 17


def test_hourglass_defaults_match_the_seed_keras_model():
    variables = abstract_variables(models.get_model("hourglass"), (1, 64, 64, 1))
    assert count(variables["params"]) == 90_589  # the seed notebook's model.summary() total
    assert "batch_stats" not in variables


@pytest.mark.parametrize("depth", [2, 3])
def test_hourglass_decoder_sees_only_the_path_below_it_no_skip_connections(depth):
    params = abstract_variables(models.get_model("hourglass", depth=depth), (1, 64, 64, 1))["params"]

    def first_conv_inputs(stage):
        return params[stage]["conv_a"]["conv0"]["kernel"].shape[2]

    def output_width(stage):
        return params[stage]["conv_b"]["conv0"]["kernel"].shape[3]

    # A skip would add the encoder's width to each decoder's input channels.
    below = "bottleneck"
    for level in reversed(range(depth)):
        assert first_conv_inputs(f"decoder{level}") == output_width(below)
        below = f"decoder{level}"
    assert first_conv_inputs(f"decoder{depth - 1}") == 4 * 4 ** depth  # the bottleneck width


@pytest.mark.parametrize("name,tiny", [("unet_plus_plus", TINY_UNETPP),
                                       ("hourglass", TINY_HOURGLASS)])
def test_odd_sized_three_channel_input(name, tiny):
    if name == "unet_plus_plus":
        logits = unetpp_outputs("none")[0]  # the tiny UNet++ on a (2, 37, 45, 3) batch
    else:
        model = models.get_model(name, **tiny)
        images = jnp.ones((2, 37, 45, 3))
        logits = model.apply(init(model, images), images, train=False)
    assert logits.shape == (2, 37, 45, 1)
    assert logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
