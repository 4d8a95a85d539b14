"""Preemption: a run stopped by SIGTERM, killed by SIGKILL or crashed in the middle of a checkpoint
save resumes, when rerun, to exactly the parameters of an uninterrupted run.

The interrupted runs are real `retina_jax.main` processes (tests/preemptible_main.py), signalled
at steps drawn from a fixed seed once they announce that step's batch.
"""
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import vessels
from retina_jax import checkpoint, train
from tests.test_multihost import free_port

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_SECONDS = 240
KILL_POINTS_SEED = 20260


def preemption_config(tfds_dir: str):
    """12 steps of the smoke run: evaluations (best-checkpoint candidates) at 6 and 12, and a
    metric-less checkpoint every 2 steps."""
    config = vessels.get_config("smoke")
    config.dataset.data_dir = tfds_dir
    config.train.num_steps = 12
    config.train.eval_every = 6
    config.train.log_every = 3
    config.checkpoint.every_steps = 2
    return config


def config_flags(config, workdir: Path) -> list[str]:
    """The command-line form of `preemption_config` (one CPU device, as in this process)."""
    return ["--config=configs/vessels.py:smoke", f"--workdir={workdir}",
            f"--config.dataset.data_dir={config.dataset.data_dir}",
            f"--config.train.num_steps={config.train.num_steps}",
            f"--config.train.eval_every={config.train.eval_every}",
            f"--config.train.log_every={config.train.log_every}",
            f"--config.checkpoint.every_steps={config.checkpoint.every_steps}",
            "--config.parallel.cpu_devices=1"]


class Run:
    """tests/preemptible_main.py as a child process: stdout read line by line, stderr to a file."""

    def __init__(self, flags: list[str], log: Path):
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "preemptible_main.py"), *flags], cwd=REPO,
            stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.process.stdout, selectors.EVENT_READ)
        self.deadline = time.monotonic() + TIMEOUT_SECONDS

    def wait_for_batch(self, step: int) -> None:
        """Returns once the run takes the batch of training step `step`."""
        expected = f"batch {step}"
        while True:
            if not self.selector.select(timeout=max(self.deadline - time.monotonic(), 0)):
                self.fail(f"no {expected!r} within {TIMEOUT_SECONDS} s")
            line = self.process.stdout.readline()
            if not line:
                self.fail(f"exited with {self.process.wait()} before {expected!r}")
            if line.strip() == expected:
                return

    def finish(self) -> int:
        """The exit code (negative: killed by that signal)."""
        self.process.stdout.read()
        try:
            return self.process.wait(timeout=max(self.deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            self.fail(f"still running after {TIMEOUT_SECONDS} s")

    def fail(self, why: str) -> None:
        self.process.kill()
        self.process.wait()
        pytest.fail(f"{self.process.args}: {why}; its log:\n{self.log.read_text()[-3000:]}")

    def stderr(self) -> str:
        return self.log.read_text()


def checkpoint_steps(workdir: Path) -> tuple[int | None, list[int], list[str]]:
    """The latest complete checkpoint, every complete one, and the names of unfinished saves."""
    manager = checkpoint.create_manager(workdir / "checkpoints")
    partial = sorted(path.name for path in (workdir / "checkpoints").glob("*.orbax-checkpoint-tmp*"))
    return manager.latest_step(), manager.all_steps(), partial


def saved_params(config, workdir: Path):
    experiment = train.Experiment(config)
    manager = checkpoint.create_manager(workdir / "checkpoints")
    state, _ = train.restore_or_initial(experiment, manager, manager.latest_step())
    assert int(state.step) == config.train.num_steps
    return jax.device_get(state.params), manager.best_step()


def without_timing(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key != "train_seconds"}


@pytest.mark.slow
def test_sigterm_sigkill_and_a_crash_mid_save_then_rerun_equal_an_uninterrupted_run(
        tfds_dir, vessel_builder, tmp_path):
    config = preemption_config(tfds_dir)
    workdir = tmp_path / "interrupted"
    flags = config_flags(config, workdir)
    rng = np.random.default_rng(KILL_POINTS_SEED)

    # 1. SIGTERM at a random step: the step ends, a checkpoint is saved there, exit code 0.
    sigterm_step = int(rng.integers(1, 5))
    run = Run(flags, tmp_path / "sigterm.log")
    run.wait_for_batch(sigterm_step)
    run.process.send_signal(signal.SIGTERM)
    assert run.finish() == 0, run.stderr()[-3000:]
    latest, steps, partial = checkpoint_steps(workdir)
    assert sigterm_step <= latest < config.train.num_steps and not partial
    assert f"saved a checkpoint at step {latest} of 12" in run.stderr()
    assert not (workdir / "metrics.json").exists()  # no final evaluation
    resumed_from = latest

    # 2. SIGKILL at a random moment: what was saved before the step is kept (every 2 steps).
    sigkill_step = int(rng.integers(resumed_from + 2, 8))
    run = Run(flags, tmp_path / "sigkill.log")
    run.wait_for_batch(sigkill_step)
    time.sleep(rng.uniform(0.0, 0.1))
    run.process.send_signal(signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL
    assert f"Resuming from step {resumed_from} " in run.stderr()
    latest, steps, partial = checkpoint_steps(workdir)
    assert sigkill_step - 2 <= latest < 10
    resumed_from = latest

    # 3. A crash while saving step 10: its half-written folder is ignored, step 8 is the latest.
    run = Run([*flags, "--crash_in_save_at=10"], tmp_path / "crash.log")
    assert run.finish() == -signal.SIGKILL
    assert f"Resuming from step {resumed_from} " in run.stderr()
    latest, steps, partial = checkpoint_steps(workdir)
    assert latest == 8 and len(partial) == 1 and partial[0].startswith("10.orbax-checkpoint-tmp")
    assert 6 in steps  # the evaluated step 6 is kept as the best so far

    # 4. The last rerun resumes from step 8, removes the unfinished save and ends like a run
    #    that was never interrupted.
    final = train.train_and_evaluate(config, workdir)
    assert checkpoint_steps(workdir)[2] == []
    straight = train.train_and_evaluate(config, tmp_path / "uninterrupted")
    assert without_timing(final) == without_timing(straight)
    (params, best), (straight_params, straight_best) = (saved_params(config, workdir),
                                                        saved_params(config, tmp_path / "uninterrupted"))
    assert best == straight_best
    jax.tree.map(np.testing.assert_array_equal, params, straight_params)
    written = json.loads((workdir / "eval" / "validation" / "metrics.json").read_text())
    assert written["checkpoint_step"] == best


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tfds_dir, vessel_builder, tmp_path):
    """JAX's preemption service carries the notice to the other process and picks the step."""
    config = preemption_config(tfds_dir)
    workdir = tmp_path / "run"
    port = free_port()
    runs = [Run([*config_flags(config, workdir), f"--config.parallel.coordinator_address=127.0.0.1:{port}",
                 "--config.parallel.num_processes=2", f"--config.parallel.process_id={index}"],
                tmp_path / f"process_{index}.log") for index in range(2)]
    runs[1].wait_for_batch(3)
    runs[1].process.send_signal(signal.SIGTERM)
    assert [run.finish() for run in runs] == [0, 0], runs[0].stderr()[-3000:] + runs[1].stderr()[-3000:]
    latest, _, partial = checkpoint_steps(workdir)
    assert 3 <= latest < config.train.num_steps and not partial
    for run in runs:
        assert f"saved a checkpoint at step {latest} of 12" in run.stderr()


def test_checkpoints_without_metrics_serve_resuming_but_never_rank_as_best(tmp_path):
    manager = checkpoint.create_manager(tmp_path, best_metric="dice")
    run_info = {"model": {"name": "test"}}
    for step, metrics in [(2, {"dice": 0.5}), (3, None), (4, {"dice": 0.4}), (5, None)]:
        checkpoint.save(manager, step, {"w": jnp.full(3, float(step))}, run_info, metrics)
    assert manager.all_steps() == [2, 5]  # the best by Dice and the latest; 3 and 4 deleted
    assert manager.best_step() == 2 and manager.latest_step() == 5

    # A save that never completed: seen neither by this manager nor a new one, until the
    # training run's manager (remove_partial) deletes it.
    (tmp_path / "6.orbax-checkpoint-tmp-1234567890" / "state").mkdir(parents=True)
    reopened = checkpoint.create_manager(tmp_path, best_metric="dice")
    assert reopened.all_steps() == [2, 5] and reopened.latest_step() == 5
    assert (tmp_path / "6.orbax-checkpoint-tmp-1234567890").exists()
    training = checkpoint.create_manager(tmp_path, best_metric="dice", remove_partial=True)
    training.wait_until_finished()
    checkpoint.save(training, 6, {"w": jnp.full(3, 6.0)}, run_info)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["2", "6"]


def test_preemption_notice_handles_sigterm_only_inside_its_block():
    before = signal.getsignal(signal.SIGTERM)
    with checkpoint.PreemptionNotice() as notice:
        assert signal.getsignal(signal.SIGTERM) != before
        assert not notice.reached(1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # Python runs the handler at its next bytecode boundary
        assert notice.reached(2)
    assert signal.getsignal(signal.SIGTERM) == before
