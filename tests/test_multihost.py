"""Multi-process (multi-host) data parallelism, proven with real processes on one machine.

Two CPU processes with one device each join through `jax.distributed` (gloo collectives,
coordinator on 127.0.0.1) and must train exactly like one process fed the same global batch.
The rules that decide when a process joins a distributed run are tested as pure functions.
"""
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from retina_jax import parallel
from tests import multihost_step

REPO = Path(__file__).resolve().parents[1]
# Parameters after the same steps in 2 processes (a batch of 1 each) and in 1 (a batch of 2) agree
# to float32 reduction order, which Adam's normalised update amplifies where a gradient is near
# zero: 1.2e-5 on an AVX2 CPU (2026-12-06), under 1e-5 on an AVX-512 one; the steps themselves
# move parameters by more than 1e-3 (asserted), 20x this.
ONE_VS_TWO_PROCESS_ATOL = 5e-5
TIMEOUT_SECONDS = 240


def parallel_config(address: str = "", num_processes: int = 0, process_id: int = -1):
    return ml_collections.ConfigDict({"coordinator_address": address, "num_processes": num_processes,
                                      "process_id": process_id})


SRUN_4_TASKS = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_NTASKS": "4",
                "SLURM_PROCID": "1", "SLURM_LOCALID": "1"}


@pytest.mark.parametrize("environ, processes", [
    ({}, 1),
    (SRUN_4_TASKS, 4),
    ({**SRUN_4_TASKS, "SLURM_NTASKS": "1"}, 1),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, 1),  # the sbatch script itself, not a srun step
    ({"OMPI_MCA_orte_hnp_uri": "1.2.3.4:5", "OMPI_COMM_WORLD_SIZE": "3"}, 3),
    ({"TPU_WORKER_HOSTNAMES": "tpu-0,tpu-1,tpu-2,tpu-3"}, 4),
])
def test_launcher_process_count(environ, processes):
    assert parallel.launcher_process_count(environ) == processes


def test_distributed_arguments():
    assert parallel.distributed_arguments(parallel_config(), {}) is None
    assert parallel.distributed_arguments(parallel_config("10.0.0.1:1234", 2, 0), {}) == {
        "coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 0}
    # A launcher supplies what the config leaves unset; JAX reads it from the environment.
    assert parallel.distributed_arguments(parallel_config(), SRUN_4_TASKS) == {}
    assert parallel.distributed_arguments(parallel_config("10.0.0.1:1234"), SRUN_4_TASKS) == {
        "coordinator_address": "10.0.0.1:1234"}
    assert parallel.distributed_arguments(parallel_config("auto"), {}) == {}
    assert parallel.distributed_arguments(parallel_config("auto", 8), {}) == {"num_processes": 8}


def test_distributed_arguments_without_launcher_need_all_three_fields():
    with pytest.raises(ValueError, match=r"not \['num_processes', 'process_id'\]"):
        parallel.distributed_arguments(parallel_config("10.0.0.1:1234"), {})
    with pytest.raises(ValueError, match=r"not \['coordinator_address'\]"):
        parallel.distributed_arguments(parallel_config("", 2, 1), {})


def test_cpu_devices_split_the_batch_over_every_process(monkeypatch):
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: set(range(4)))
    config = ml_collections.ConfigDict({"parallel": {"cpu_devices": 0},
                                        "train": {"batch_size": 12}, "eval": {"batch_size": 24}})
    assert parallel.cpu_device_count(config) == 4
    assert parallel.cpu_device_count(config, process_count=2) == 3   # 2 x 3 devices split 12
    assert parallel.cpu_device_count(config, process_count=5) == 1   # left to local_batch_size to reject
    config.parallel.cpu_devices = 2
    assert parallel.cpu_device_count(config, process_count=2) == 2


def test_predict_gets_one_cpu_device_unless_one_is_configured(monkeypatch):
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: set(range(4)))
    config = ml_collections.ConfigDict({"parallel": {"cpu_devices": 0},
                                        "train": {"batch_size": 12}, "eval": {"batch_size": 24}})
    assert parallel.cpu_device_count(config, mode="evaluate") == 4
    assert parallel.cpu_device_count(config, mode="predict") == 1  # one image at a time: all cores on it
    config.parallel.cpu_devices = 2
    assert parallel.cpu_device_count(config, mode="predict") == 2


def test_uneven_local_batches_are_refused_before_they_reach_a_collective():
    with pytest.raises(ValueError, match="different batch sizes"):
        parallel.local_batch_rows({"image": np.zeros((4, 2)), "label": np.zeros(3)}, 1, 1)
    with pytest.raises(ValueError, match="3 rows x 2 process.* 4 devices"):
        parallel.local_batch_rows({"image": np.zeros((3, 2))}, 2, 4)
    assert parallel.local_batch_rows({"image": np.zeros((2, 5)), "label": np.zeros(2)}, 2, 4) == 2
    mesh = parallel.make_mesh(0)
    batch = parallel.to_global_batch({"image": np.ones((2 * mesh.size, 3))}, mesh)
    assert batch["image"].shape == (2 * mesh.size, 3)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_together(commands: list[list[str]], log_dir: Path, meanwhile=lambda: None) -> tuple[list[str], object]:
    """Runs the commands as concurrent processes, and `meanwhile()` here while they run.

    Returns their stdout and what `meanwhile` returned, failing on any error. Output goes to
    files, not pipes: a process blocked on a full pipe would stall its peers in a collective.
    A process that dies leaves the others waiting, hence the shared deadline.
    """
    logs = [(log_dir / f"process_{index}.out", log_dir / f"process_{index}.err")
            for index in range(len(commands))]
    processes = [subprocess.Popen(command, stdout=out.open("w"), stderr=err.open("w"), cwd=REPO)
                 for command, (out, err) in zip(commands, logs)]
    deadline = time.monotonic() + TIMEOUT_SECONDS
    try:
        in_this_process = meanwhile()
        for process in processes:
            process.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pytest.fail(f"Processes still running after {TIMEOUT_SECONDS} s; stderr of process 0:\n"
                    + logs[0][1].read_text()[-3000:])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, (out, err) in zip(processes, logs):
        assert process.returncode == 0, f"{process.args}\n{err.read_text()[-3000:]}"
    return [out.read_text() for out, _ in logs], in_this_process


def last_json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_two_processes_train_like_one(tmp_path):
    helper = [sys.executable, str(REPO / "tests" / "multihost_step.py")]
    two, one = tmp_path / "two_processes", tmp_path / "one_process"
    two.mkdir()
    one.mkdir()
    port = str(free_port())
    outputs, (single, single_params) = run_together(
        [[*helper, str(index), "2", port, str(two)] for index in range(2)], two,
        meanwhile=lambda: multihost_step.train_and_checkpoint(one))  # the 1-process baseline
    results = [last_json_line(stdout) for stdout in outputs]

    assert [result["process_id"] for result in results] == [0, 1]
    assert all(result["processes"] == 2 and result["devices"] == 2 and result["local_devices"] == 1
               for result in results)
    assert single["processes"] == 1 and single["devices"] == 1
    assert single["param_change"] > 1e-3  # the steps did move the parameters
    for result in results:
        np.testing.assert_allclose(result["losses"], single["losses"], rtol=1e-5)
        assert result["restored_diff"] == 0.0  # Orbax saved and restored across both processes

    params = [np.load(two / f"params_{index}.npz") for index in range(2)]
    assert set(params[0]) == set(single_params) and len(single_params) > 0
    for name in single_params:
        np.testing.assert_array_equal(params[0][name], params[1][name])  # replicas never drift
        np.testing.assert_allclose(params[0][name], single_params[name], atol=ONE_VS_TWO_PROCESS_ATOL,
                                   err_msg=name)

    # Checkpoints written by 2 processes and by 1 restore alike onto this process's devices.
    at_step_two = multihost_step.restore_params(two), multihost_step.restore_params(one)
    assert multihost_step.max_abs_difference(*at_step_two) < ONE_VS_TWO_PROCESS_ATOL


@pytest.mark.slow
def test_main_trains_with_two_processes_end_to_end(tfds_dir, vessel_builder, tmp_path):
    port, workdir = free_port(), tmp_path / "run"
    # 8 validation images, 4 per process: fewer than the 6 Grad-CAM explains.
    one_process = [sys.executable, "-m", "retina_jax.main", "--config=configs/vessels.py:smoke",
                   f"--workdir={workdir}", f"--config.dataset.data_dir={tfds_dir}", "--config.train.num_steps=2",
                   "--config.dataset.validation_split=validation[:8]"]
    common = [*one_process, f"--config.parallel.coordinator_address=127.0.0.1:{port}",
              "--config.parallel.num_processes=2", "--config.parallel.cpu_devices=1"]
    preview = ["--config.gradcam.tensorboard=True", "--config.gradcam.num_images=6"]
    # A time budget is fitted on process 0's timing and broadcast: both processes take part.
    budget = ["--config.train.time_budget_minutes=60"]
    run_together([[*common, *preview, *budget, f"--config.parallel.process_id={index}"] for index in range(2)],
                 tmp_path)
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["step"] == 2
    assert metrics["time_budget"]["fitted_at_step"] == 2 and metrics["time_budget"]["num_steps"] == 2
    assert metrics["num_examples"] == 8  # each process evaluated its own half of the split
    (event_file,) = workdir.glob("events.out.tfevents.*")  # only process 0 logs

    # Grad-CAM: process 0 writes every requested image, as one process does.
    explain = ["--mode=gradcam", "--config.gradcam.num_images=6"]
    run_together([[*common, *explain, f"--config.parallel.process_id={index}"] for index in range(2)], tmp_path)
    summary_path = workdir / "gradcam" / "validation" / "summary.json"
    by_two = json.loads(summary_path.read_text())
    summary_path.unlink()
    run_together([[*one_process, "--config.parallel.cpu_devices=1", *explain]], tmp_path)
    by_one = json.loads(summary_path.read_text())
    assert len(by_two["images"]) == 6
    assert [row["id"] for row in by_two["images"]] == [row["id"] for row in by_one["images"]]
    assert by_two["pointing_game"] == pytest.approx(by_one["pointing_game"], abs=1e-6)
    assert sorted(path.name for path in summary_path.parent.glob("0*.png")) == sorted(
        row["file"] for row in by_one["images"])
    # The sheet training logged at its step-2 evaluation shows the same 6 images, explained
    # with the same state (the step-2 checkpoint is the one --mode=gradcam explained).
    logged_sheet = logged_images(event_file, "validation/gradcam")[2]
    np.testing.assert_array_equal(logged_sheet, np.asarray(Image.open(summary_path.parent / "contact_sheet.png")))


def logged_images(event_file: Path, tag: str) -> dict[int, np.ndarray]:
    """The images a TensorBoard event file holds under `tag`, by step."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2
    images = {}
    for record in tf.data.TFRecordDataset(str(event_file)):
        event = event_pb2.Event.FromString(record.numpy())
        for value in event.summary.value:
            if value.tag == tag:  # tf.summary.image's tensor: width, height, then the PNG
                images[event.step] = tf.io.decode_png(value.tensor.string_val[2]).numpy()
    return images


def test_compilation_cache_keeps_compiled_programs_for_the_next_run(tmp_path):
    program = ("import sys, jax, jax.numpy as jnp; from retina_jax import parallel; "
               "parallel.enable_compilation_cache(sys.argv[1]); "
               "print(float(jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).sum()))")
    cache = tmp_path / "cache"
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", program, str(cache)], cwd=REPO,
                              capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
        assert done.returncode == 0, done.stderr[-2000:]
        assert float(done.stdout.strip().splitlines()[-1]) == pytest.approx(6 * np.sin(1.0), rel=1e-6)
    assert any(cache.iterdir()), "no compiled program was written to the cache"


SOAK_CYCLES = 40


@pytest.mark.slow
def test_two_device_training_survives_many_train_evaluate_alternations(tfds_dir, vessel_builder, tmp_path):
    """The default CPU set-up (one device per core, here 2) alternating train steps with
    evaluations whose last batch is padded (173 examples in batches of 64), SOAK_CYCLES times:
    the pattern after which a run once hung in an all-reduce. A hang fails on the timeout."""
    workdir = tmp_path / "soak"
    command = [sys.executable, "-m", "retina_jax.main", "--config=configs/vessels.py:smoke",
               f"--workdir={workdir}", f"--config.dataset.data_dir={tfds_dir}",
               "--config.parallel.cpu_devices=2", f"--config.train.num_steps={2 * SOAK_CYCLES}",
               "--config.train.eval_every=2", "--config.train.log_every=2"]
    run_together([command], tmp_path)
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["step"] == 2 * SOAK_CYCLES and metrics["num_examples"] == 173
    assert "CpuDevice(id=1)" in (tmp_path / "process_0.err").read_text()  # really two devices
