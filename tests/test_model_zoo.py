"""One contract test over the whole model registry (shapes, gradients, training, init, counts)."""
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from retina_jax import models

README = Path(__file__).resolve().parents[1] / "README.md"
# Fast variants for the compute checks; full widths are only counted (jax.eval_shape).
TINY = {
    "dr_net": dict(features=4),
    "hourglass": dict(features=2, depth=2),
    "octnet": dict(features=4),
    "resnet18": dict(features=8),
    "resnet34": dict(features=8),
    "resnet50": dict(features=8),
    "resnet34_unet": dict(features=8, decoder_features=(16, 8, 8, 8, 4)),
    "resunet": dict(features=4, depth=2),
    "resunet_pp": dict(features=4, depth=2),
    "unet": dict(features=4, depth=2),
    "unet_plus_plus": dict(features=4, depth=2),
}
# Two input sizes per task; one is not a multiple of 32 (octnet and dr_net need 64 or more).
INPUT_SIZES = {"segmentation": [(37, 45), (64, 64)], "classification": [(72, 80), (64, 64)]}
NUM_CLASSES = 3
CHANNELS = 2


def tiny_model(name: str, **overrides):
    return models.get_model(name, num_classes=NUM_CLASSES, **{**TINY.get(name, {}), **overrides})


def readme_parameter_counts() -> dict[str, int]:
    """`name` -> parameters, from the README's architecture table."""
    rows = re.findall(r"^\| `(\w+)` \| \w+ \| \([\d, ]+\) \| ([\d,]+) \|", README.read_text(), re.MULTILINE)
    return {name: int(count.replace(",", "")) for name, count in rows}


def expected_logits_shape(name: str, batch: int, height: int, width: int) -> tuple[int, ...]:
    if models.info(name).task == "segmentation":
        return (batch, height, width, NUM_CLASSES)
    return (batch, NUM_CLASSES)


def task_loss(name: str, logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    if models.info(name).task == "segmentation":
        return optax.sigmoid_binary_cross_entropy(logits, targets).mean()
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def random_batch(name: str, height: int, width: int):
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(2, height, width, CHANNELS)), jnp.float32)
    if models.info(name).task == "segmentation":
        targets = jnp.asarray(rng.random((2, height, width, NUM_CLASSES)) > 0.7, jnp.float32)
    else:
        targets = jnp.asarray([0, 2])
    return images, targets


@pytest.mark.parametrize("name", models.available())
def test_output_shapes_for_two_input_sizes(name):
    model = tiny_model(name)
    for height, width in INPUT_SIZES[models.info(name).task]:
        images, _ = random_batch(name, height, width)
        variables = model.init(jax.random.key(0), images, train=False)
        logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
        assert logits.shape == expected_logits_shape(name, 2, height, width)
        assert logits.dtype == jnp.float32


@pytest.mark.parametrize("name", models.available())
def test_init_is_deterministic_given_the_seed(name):
    model = tiny_model(name)
    images, _ = random_batch(name, *INPUT_SIZES[models.info(name).task][1])
    first, again = (model.init(jax.random.key(7), images, train=False) for _ in range(2))
    other = model.init(jax.random.key(8), images, train=False)
    jax.tree.map(np.testing.assert_array_equal, first, again)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first["params"]),
                                                        jax.tree.leaves(other["params"])))


@pytest.mark.parametrize("name", models.available())
def test_gradients_are_finite_and_a_few_steps_lower_the_loss(name):
    model = tiny_model(name)
    images, targets = random_batch(name, *INPUT_SIZES[models.info(name).task][1])
    variables = model.init(jax.random.key(0), images, train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    tx = optax.adam(3e-3)
    dropout_key = jax.random.key(1)  # fixed: the loss is then a function of the parameters alone

    def loss_fn(params, batch_stats):
        logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                                      rngs={"dropout": dropout_key}, mutable=["batch_stats"])
        return task_loss(name, logits, targets), updates.get("batch_stats", {})

    @jax.jit
    def step(params, batch_stats, opt_state):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss, grads

    opt_state, step_losses = tx.init(params), []
    for index in range(6):
        params, batch_stats, opt_state, loss, grads = step(params, batch_stats, opt_state)
        if index == 0:
            assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(grads))
        step_losses.append(float(loss))
    assert step_losses[-1] < step_losses[0], step_losses


@pytest.mark.parametrize("name", models.available())
def test_pre_logits_hook_and_bfloat16_compute(name):
    model = tiny_model(name, dtype=jnp.bfloat16)
    images, _ = random_batch(name, *INPUT_SIZES[models.info(name).task][1])
    variables = model.init(jax.random.key(0), images, train=False)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables["params"]))
    logits, state = model.apply(variables, images, train=False, mutable=["intermediates"])
    assert logits.dtype == jnp.float32
    assert "pre_logits" in state["intermediates"], sorted(state["intermediates"])


@pytest.mark.parametrize("name", models.available())
def test_parameter_count_is_the_documented_one(name):
    documented = readme_parameter_counts()
    assert name in documented, f"README's architecture table lacks {name}"
    model, shape = models.get_model(name), models.info(name).input_shape
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False))
    assert sum(leaf.size for leaf in jax.tree.leaves(variables["params"])) == documented[name]
