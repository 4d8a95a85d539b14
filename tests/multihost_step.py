"""Run as a script: process PROCESS_ID of NUM_PROCESSES trains the smoke U-Net for a few steps.

Usage: multihost_step.py PROCESS_ID NUM_PROCESSES PORT WORKDIR

Every process has one CPU device and feeds only its own rows of one fixed global batch; the
processes join through `parallel.initialize_distributed` (coordinator 127.0.0.1:PORT) as
`retina_jax.main` does. After two steps the state is checkpointed with Orbax into
WORKDIR/checkpoints and restored, then one more step runs from the restored arrays.
Imported, `train_and_checkpoint` is the same run in the importing process (one process), and
`restore_params` reads such a checkpoint back on whatever devices its caller has.

Plain SGD, not Adam: Adam divides by the gradient's own magnitude, which turns float round-off
in near-zero gradients into full-size steps and would hide what is compared here.
Writes this process's final parameters to WORKDIR/params_<PROCESS_ID>.npz and prints JSON
(losses, process and device counts, largest parameter change, restore difference) on the last
line.
"""
import json
import os
import sys
from pathlib import Path

import jax
import numpy as np
import optax
from flax import traverse_util

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import vessels  # noqa: E402
from retina_jax import checkpoint, parallel, train  # noqa: E402

IMAGE_SHAPE = (16, 16, 1)
GLOBAL_BATCH = 8
CHECKPOINT_STEP = 2


def global_batch() -> dict:
    """The same 8 examples in every process; each feeds only its own slice of them."""
    rng = np.random.default_rng(0)
    return {"image": rng.normal(size=(GLOBAL_BATCH, *IMAGE_SHAPE)).astype(np.float32),
            "mask": (rng.random((GLOBAL_BATCH, *IMAGE_SHAPE)) > 0.7).astype(np.float32),
            "labelled": np.ones(GLOBAL_BATCH, np.float32)}


def own_rows(batch: dict) -> dict:
    rows = GLOBAL_BATCH // jax.process_count()
    start = jax.process_index() * rows
    return {key: value[start:start + rows] for key, value in batch.items()}


def local_numpy(tree) -> dict:
    """A replicated (possibly multi-process) pytree as flat numpy copies of this process's replica.

    Copies, because the next train step donates (reuses) the state's buffers.
    """
    flat = traverse_util.flatten_dict(tree, sep="/")
    return {key: np.array(value.addressable_data(0)) for key, value in flat.items()}


def max_abs_difference(tree_a: dict, tree_b: dict) -> float:
    return max(float(np.max(np.abs(tree_a[key] - tree_b[key]))) for key in tree_a)


def model_and_optimizer(config):
    return train.build_model(config), optax.sgd(0.1)


def initial_state_fn(model, tx, mesh):
    return jax.jit(lambda key: train.create_train_state(model, tx, key, IMAGE_SHAPE),
                   out_shardings=parallel.replicated(mesh))


def run_info(config, model) -> dict:
    return {"model": train.model_record(config.model.name, model), "train_seconds": 0.0}


def restore_params(workdir: Path) -> dict:
    """The parameters of the step-2 checkpoint in `workdir`, restored onto this process's mesh."""
    config = vessels.get_config("smoke")
    model, tx = model_and_optimizer(config)
    target = initial_state_fn(model, tx, parallel.make_mesh())(jax.random.key(0))
    state, _ = checkpoint.restore(checkpoint.create_manager(workdir / "checkpoints"), CHECKPOINT_STEP,
                                  target, run_info(config, model))
    return local_numpy(state.params)


def train_and_checkpoint(workdir: Path) -> tuple[dict, dict]:
    """Three steps with a checkpoint after two, in every process of the run.

    Returns the summary (see the module docstring) and this process's final parameters.
    """
    config = vessels.get_config("smoke")
    model, tx = model_and_optimizer(config)
    mesh = parallel.make_mesh()
    replicated = parallel.replicated(mesh)
    initial = initial_state_fn(model, tx, mesh)
    step = jax.jit(lambda s, b: train.train_step(s, b, model=model, tx=tx, batch_loss=train.segmentation_loss("bce_dice"),
                                                 dropout_key=jax.random.key(1)),
                   donate_argnums=(0,), out_shardings=(replicated, replicated))
    batch = parallel.to_global_batch(own_rows(global_batch()), mesh)
    info = run_info(config, model)
    manager = checkpoint.create_manager(workdir / "checkpoints")

    state, step_losses = initial(jax.random.key(0)), []
    initial_params = local_numpy(state.params)
    for _ in range(CHECKPOINT_STEP):
        state, step_metrics = step(state, batch)
        step_losses.append(float(step_metrics["loss"]))
    checkpoint.save(manager, CHECKPOINT_STEP, state, info, {"dice": 0.0})
    manager.wait_until_finished()
    at_checkpoint = local_numpy(state.params)
    state, _ = checkpoint.restore(manager, CHECKPOINT_STEP, initial(jax.random.key(0)), info)
    restored_diff = max_abs_difference(at_checkpoint, local_numpy(state.params))
    state, step_metrics = step(state, batch)
    step_losses.append(float(step_metrics["loss"]))

    final_params = local_numpy(state.params)
    return {"process_id": jax.process_index(), "processes": jax.process_count(),
            "devices": jax.device_count(), "local_devices": jax.local_device_count(),
            "losses": step_losses, "restored_diff": restored_diff,
            "param_change": max_abs_difference(initial_params, final_params)}, final_params


def main():
    process_id, num_processes, port, workdir = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                                Path(sys.argv[4]))
    config = vessels.get_config("smoke")
    config.parallel.coordinator_address = f"127.0.0.1:{port}"
    config.parallel.num_processes = num_processes
    config.parallel.process_id = process_id
    parallel.initialize_distributed(config)  # as retina_jax.main does, before any backend starts
    jax.config.update("jax_num_cpu_devices", 1)
    result, final_params = train_and_checkpoint(workdir)
    np.savez(workdir / f"params_{process_id}.npz", **final_params)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
