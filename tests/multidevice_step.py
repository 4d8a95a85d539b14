"""Run as a script with N host devices: two train steps on 1 device vs on all N devices.

Plain SGD, not Adam: Adam divides by the gradient's own magnitude, which turns float round-off
in near-zero gradients into full-size steps and would hide what is compared here.
Prints the largest differences as JSON on the last line.
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={sys.argv[1]}"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import vessels  # noqa: E402
from retina_jax import parallel, train  # noqa: E402

IMAGE_SHAPE = (16, 16, 1)


def train_two_steps(num_devices: int, model, tx, batch: dict):
    mesh = parallel.make_mesh(num_devices)
    replicated = parallel.replicated(mesh)
    state = jax.jit(lambda key: train.create_train_state(model, tx, key, IMAGE_SHAPE),
                    out_shardings=replicated)(jax.random.key(0))
    step = jax.jit(lambda s, b: train.train_step(s, b, model=model, tx=tx, batch_loss=train.segmentation_loss("bce_dice"),
                                                 dropout_key=jax.random.key(1)),
                   donate_argnums=(0,), out_shardings=(replicated, replicated))
    step_losses = []
    for _ in range(2):
        state, step_metrics = step(state, parallel.to_global_batch(batch, mesh))
        step_losses.append(float(step_metrics["loss"]))
    return jax.device_get(state), step_losses


def max_abs_difference(tree_a, tree_b) -> float:
    return max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), tree_a, tree_b)))


def main():
    model, tx = train.build_model(vessels.get_config("smoke")), optax.sgd(0.1)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, *IMAGE_SHAPE)).astype(np.float32),
             "mask": (rng.random((8, *IMAGE_SHAPE)) > 0.7).astype(np.float32),
             "labelled": np.ones(8, np.float32)}
    initial = train.create_train_state(model, tx, jax.random.key(0), IMAGE_SHAPE)
    (single, single_losses), (multi, multi_losses) = (train_two_steps(1, model, tx, batch),
                                                      train_two_steps(jax.device_count(), model, tx, batch))
    print(json.dumps({"devices": jax.device_count(),
                      "losses_single": single_losses, "losses_multi": multi_losses,
                      "max_param_diff": max_abs_difference(single.params, multi.params),
                      "max_stats_diff": max_abs_difference(single.batch_stats, multi.batch_stats),
                      "max_param_change": max_abs_difference(single.params, jax.device_get(initial.params))}))


if __name__ == "__main__":
    main()
