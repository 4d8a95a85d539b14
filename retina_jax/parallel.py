"""Device mesh and shardings for data parallelism (one code path for 1 device, N devices, N hosts).

The batch is sharded along the mesh axis `'data'`; the train state is replicated. Under
`jax.jit` batch norm therefore sees the global batch (synchronised BN for free).

Several processes (hosts) join one global mesh through `initialize_distributed`, which must run
before anything starts a JAX backend.
"""
import math
import os
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


# `config.parallel.coordinator_address` value that leaves every distributed setting to JAX's
# own cluster detection (e.g. a TPU pod slice on GCE, known only from its metadata server).
AUTO_COORDINATOR = "auto"


def launcher_process_count(environ: Mapping[str, str]) -> int:
    """How many processes a launcher that `jax.distributed` understands started (1: none).

    Read from the environment of a SLURM job step (`srun`), an Open MPI `mpirun`, or a
    multi-host TPU slice on GKE, so that a job they launch needs no distributed flags. A SLURM
    batch script itself (no job step) counts as one process: it is not part of a `srun`.
    """
    if "SLURM_STEP_NODELIST" in environ and "SLURM_NTASKS" in environ:
        return int(environ["SLURM_NTASKS"])
    if "OMPI_MCA_orte_hnp_uri" in environ and "OMPI_COMM_WORLD_SIZE" in environ:
        return int(environ["OMPI_COMM_WORLD_SIZE"])
    tpu_hosts = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES")
    return len(tpu_hosts.split(",")) if tpu_hosts else 1


def distributed_arguments(parallel_config, environ: Mapping[str, str]) -> dict | None:
    """Keyword arguments for `jax.distributed.initialize`, or None to stay a single process.

    `parallel_config` is `config.parallel`: `coordinator_address` ("host:port" of process 0,
    "auto", or "" for unset), `num_processes` (0 = unset) and `process_id` (-1 = unset). Fields
    left unset are omitted so that JAX fills them in from the launcher's environment (see
    `launcher_process_count`); without a launcher, an explicit address needs all three.
    """
    address = parallel_config.coordinator_address
    explicit = {"coordinator_address": address if address not in ("", AUTO_COORDINATOR) else None,
                "num_processes": parallel_config.num_processes or None,
                "process_id": parallel_config.process_id if parallel_config.process_id >= 0 else None}
    given = {key: value for key, value in explicit.items() if value is not None}
    if address == AUTO_COORDINATOR or launcher_process_count(environ) > 1:
        return given
    if not given:
        return None
    missing = sorted(key for key in explicit if key not in given)
    if missing:
        raise ValueError(
            f"config.parallel sets {sorted(given)} but not {missing}, and no cluster launcher "
            "(srun, mpirun, TPU slice) is detected to supply them. Set all three "
            "(coordinator_address=HOST:PORT of process 0, num_processes, process_id), or "
            f"coordinator_address={AUTO_COORDINATOR!r} to let JAX detect the cluster.")
    return given


def initialize_distributed(config) -> int:
    """Joins this process to a multi-process JAX run when the config or launcher asks for one.

    Must run before anything starts a JAX backend (computations, `jax.devices()`); afterwards
    `jax.devices()` lists the devices of every process and one mesh spans them all. On CPU the
    processes all-reduce through gloo, jax 0.10's default `jax_cpu_collectives_implementation`.
    Returns the number of processes (1 when it does nothing).
    """
    arguments = distributed_arguments(config.parallel, os.environ)
    if arguments is None:
        return 1
    jax.distributed.initialize(**arguments)
    # No public API tells the process count without starting the backend (jax.process_count()
    # does), and the CPU device count must be set before it starts.
    from jax._src import distributed
    return distributed.global_state.num_processes


def cpu_device_count(config, process_count: int = 1, mode: str = "train") -> int:
    """How many JAX devices to make of the host CPU (only used when the CPU is the backend).

    `config.parallel.cpu_devices`, or 0 for one per core, capped so that the train and eval
    batches split evenly over the devices of all `process_count` processes. Sharding the batch
    over one device per core trains the seed U-Net faster than one device using every core
    (XLA:CPU convolutions scale poorly). `mode="predict"` gets one device: it predicts one image
    at a time, which every device would compute whole, each on its share of the cores (20 DRIVE
    images with the DRIVE config: 11.5 s on one device, 20.4 s on two; README, Speed).
    """
    if config.parallel.cpu_devices:
        return config.parallel.cpu_devices
    if mode == "predict":
        return 1
    batch_gcd = math.gcd(config.train.batch_size, config.eval.batch_size)
    cores = len(os.sched_getaffinity(0))
    return max((count for count in range(1, cores + 1) if batch_gcd % (count * process_count) == 0),
               default=1)  # an uneven split is then reported by local_batch_size


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


def local_batch_rows(local_batch: Mapping, process_count: int, num_devices: int) -> int:
    """The rows every feature of `local_batch` has; ValueError when the features disagree or
    `process_count` such batches do not split evenly over `num_devices`."""
    rows = {key: np.shape(value)[0] for key, value in local_batch.items()}
    if len(set(rows.values())) > 1:
        raise ValueError(f"Local batch features have different batch sizes: {rows}.")
    num_rows = next(iter(rows.values()))
    if (num_rows * process_count) % num_devices:
        raise ValueError(f"Local batch of {num_rows} rows x {process_count} process(es) does not "
                         f"split over the {num_devices} devices of the mesh; pad it (see "
                         "pipeline.padded_batches).")
    return num_rows


def to_global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assembles each process's numpy batch into global arrays sharded along 'data'.

    Every process must feed the same number of rows (the pipelines pad the last batch): a
    process with fewer would leave the others waiting in a collective, so an uneven local batch
    is refused here, naming the features and their sizes, before it can hang a step.
    """
    num_rows = local_batch_rows(local_batch, jax.process_count(), mesh.size)
    sharding = batch_sharded(mesh)
    return {key: jax.make_array_from_process_local_data(
                sharding, value, (num_rows * jax.process_count(), *np.shape(value)[1:]))
            for key, value in local_batch.items()}


def process_local(global_array: jax.Array) -> np.ndarray:
    """This process's rows of a replicated global batch array (as fed by `to_global_batch`)."""
    rows_per_process = global_array.shape[0] // jax.process_count()
    start = jax.process_index() * rows_per_process
    return np.asarray(global_array[start:start + rows_per_process])


def enable_compilation_cache(directory: str) -> None:
    """Keeps compiled XLA programs in `directory` (JAX's persistent compilation cache), so that a
    resumed or repeated run with the same shapes skips compilation. Call before the first jit."""
    jax.config.update("jax_compilation_cache_dir", str(directory))
    # Every program: the train and evaluation steps are few, and each costs seconds to compile.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
