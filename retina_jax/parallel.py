"""Device mesh and shardings for data parallelism (one code path for 1 device, N devices, N hosts).

The batch is sharded along the mesh axis `'data'`; the train state is replicated. Under
`jax.jit` batch norm therefore sees the global batch (synchronised BN for free).
"""
import math
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def cpu_device_count(config) -> int:
    """How many JAX devices to make of the host CPU (only used when the CPU is the backend).

    `config.parallel.cpu_devices`, or 0 for one per core, capped so that the train and eval
    batches split evenly over them. Sharding the batch over one device per core trains the
    seed U-Net faster than one device using every core (XLA:CPU convolutions scale poorly).
    """
    if config.parallel.cpu_devices:
        return config.parallel.cpu_devices
    batch_gcd = math.gcd(config.train.batch_size, config.eval.batch_size)
    cores = len(os.sched_getaffinity(0))
    return max(count for count in range(1, cores + 1) if batch_gcd % count == 0)


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D mesh over the first `num_devices` devices (0 = all devices of all processes)."""
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"parallel.num_devices={num_devices} but only {len(devices)} devices exist.")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,),
                axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """The part of the global batch this process feeds; it must split evenly over devices."""
    if global_batch_size % mesh.size:
        raise ValueError(f"Batch size {global_batch_size} is not divisible by the {mesh.size} devices "
                         f"of the mesh; choose a multiple of {mesh.size}.")
    return global_batch_size // jax.process_count()


def to_global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assembles each process's numpy batch into global arrays sharded along 'data'."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda array: jax.make_array_from_process_local_data(sharding, array),
                        local_batch)


def process_local(global_array: jax.Array) -> np.ndarray:
    """This process's rows of a replicated global batch array (as fed by `to_global_batch`)."""
    rows_per_process = global_array.shape[0] // jax.process_count()
    start = jax.process_index() * rows_per_process
    return np.asarray(global_array[start:start + rows_per_process])
