import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retina_jax import models
import retina_jax.models.resunet  # noqa: F401  (registers "resunet" and "resunet_pp")
from retina_jax.models.resunet import ASPP, AttentionGate, SqueezeExcite

TINY = {"resunet": dict(features=4, depth=2), "resunet_pp": dict(features=4, depth=2)}


def count(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def abstract_variables(model, shape):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def random_variables(model, shape):
    """Small random weights in the shapes init gives, unit batch-norm statistics: compiling the
    real initialisers (one truncated normal per kernel) costs several seconds on CPU, and the
    shape tests do not depend on the weights' distribution."""
    rng = np.random.default_rng(0)
    fill = {"params": lambda leaf: rng.uniform(-0.2, 0.2, leaf.shape).astype(leaf.dtype),
            "batch_stats": lambda leaf: np.ones(leaf.shape, leaf.dtype)}
    return {collection: jax.tree.map(fill[collection], tree)
            for collection, tree in abstract_variables(model, shape).items() if collection in fill}


@pytest.mark.parametrize("name,shape,params,batch_stats", [
    ("resunet", (1, 224, 224, 3), 8_223_809, 9_216),
    ("resunet_pp", (1, 256, 256, 3), 4_057_617, 7_392),
])
def test_reference_parameter_counts(name, shape, params, batch_stats):
    variables = abstract_variables(models.get_model(name), shape)
    assert count(variables["params"]) == params
    assert count(variables["batch_stats"]) == batch_stats


def test_resunet_pp_with_decoder_se_matches_the_authors_code_count():
    model = models.get_model("resunet_pp", decoder_se=True)
    variables = abstract_variables(model, (1, 256, 256, 3))
    assert count(variables["params"]) == 4_062_993


@pytest.mark.parametrize("name", ["resunet", "resunet_pp"])
def test_output_shape_for_odd_input_size(name):
    model = models.get_model(name, num_classes=2, **TINY[name])
    images = jax.random.normal(jax.random.key(1), (2, 37, 45, 3))
    logits = jax.jit(model.apply, static_argnames="train")(
        random_variables(model, images.shape), images, train=False)
    assert logits.shape == (2, 37, 45, 2)
    assert logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("name", ["resunet", "resunet_pp"])
def test_without_batch_norm_there_are_no_batch_stats(name):
    model = models.get_model(name, batch_norm=False, **TINY[name])
    images = jnp.ones((1, 16, 16, 1))
    variables = abstract_variables(model, images.shape)
    assert "batch_stats" not in variables
    # Training mode needs no mutable batch_stats collection either.
    logits = jax.eval_shape(lambda v: model.apply(v, images, train=True), variables)
    assert logits.shape == (1, 16, 16, 1)


def test_squeeze_excite_scales_each_channel_uniformly_over_space():
    x = jax.random.uniform(jax.random.key(1), (2, 5, 7, 16), minval=0.5, maxval=2.0)
    se = SqueezeExcite(ratio=8)
    variables = se.init(jax.random.key(0), x)
    out = se.apply(variables, x)
    scale = out / x
    # One factor per (image, channel), in (0, 1), shared by every spatial position.
    np.testing.assert_allclose(scale, jnp.broadcast_to(scale[:, :1, :1], scale.shape), rtol=1e-5)
    assert ((scale > 0) & (scale < 1)).all()
    # And that factor is sigmoid(W2 relu(W1 mean_hw(x))).
    kernels = variables["params"]
    expected = jax.nn.sigmoid(jax.nn.relu(x.mean(axis=(1, 2)) @ kernels["reduce"]["kernel"])
                              @ kernels["expand"]["kernel"])
    np.testing.assert_allclose(scale[:, 0, 0], expected, rtol=1e-5)


def test_aspp_output_channels_and_branches():
    aspp = ASPP(features=12, rates=(6, 12, 18))
    x = jnp.ones((1, 8, 8, 5))
    variables = aspp.init(jax.random.key(0), x, train=False)
    assert aspp.apply(variables, x, train=False).shape == (1, 8, 8, 12)
    # An undilated branch plus one per rate, then the 1x1 projection.
    assert sorted(variables["params"]) == ["bn0", "bn1", "bn2", "bn3",
                                           "conv0", "conv1", "conv2", "conv3", "project"]
    assert variables["params"]["conv3"]["kernel"].shape == (3, 3, 5, 12)


def test_attention_gate_map_is_in_unit_interval_and_gates_the_decoder_feature():
    skip = 5.0 * jax.random.normal(jax.random.key(1), (2, 8, 10, 4))
    x = 5.0 * jax.random.normal(jax.random.key(2), (2, 4, 5, 6))
    gate = AttentionGate()
    variables = gate.init(jax.random.key(0), skip, x, train=False)
    out, state = gate.apply(variables, skip, x, train=False, mutable=["intermediates"])
    (attention,) = state["intermediates"]["attention_map"]
    assert attention.shape == x.shape and out.shape == x.shape
    assert ((attention >= 0) & (attention <= 1)).all()
    np.testing.assert_allclose(out, x * attention, rtol=1e-6)


def test_resunet_pp_sows_one_attention_map_per_decoder_level():
    model = models.get_model("resunet_pp", **TINY["resunet_pp"])
    images = jnp.ones((1, 16, 16, 1))
    variables = abstract_variables(model, images.shape)
    _, state = jax.eval_shape(
        lambda v: model.apply(v, images, train=False, mutable=["intermediates"]), variables)
    assert sorted(k for k in state["intermediates"] if k.startswith("attention")) == [
        "attention0", "attention1"]
    # Level 0 gates the 8x8 output of decoder level 1 (width 4 * 2^2).
    assert state["intermediates"]["attention0"]["attention_map"][0].shape == (1, 8, 8, 16)
