"""`python -m retina_jax.main` for the preemption tests: the real entry point, with two hooks.

It prints `batch <step>` on stdout as the training loop takes the batch of each step (and
sleeps STEP_SECONDS there, so that a signal sent on that line lands while training), and with
`--crash_in_save_at=STEP` it SIGKILLs itself while saving checkpoint STEP: after every file of
the checkpoint is written, before Orbax commits it (the rename of its temporary folder).

Usage: python tests/preemptible_main.py [--crash_in_save_at=STEP] <retina_jax.main flags>
"""
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import app  # noqa: E402
from orbax.checkpoint._src.path import atomicity  # noqa: E402

from retina_jax import main  # noqa: E402
from retina_jax.data import pipeline  # noqa: E402

STEP_SECONDS = 0.1
CRASH_FLAG = "--crash_in_save_at="


def announcing(train_batches):
    def announced_batches(*args, start_step: int, **kwargs):
        for step, batch in enumerate(train_batches(*args, start_step=start_step, **kwargs),
                                     start=start_step + 1):
            print(f"batch {step}", flush=True)
            time.sleep(STEP_SECONDS)
            yield batch
    return announced_batches


def crashing_in_save(finalize, crash_step: int):
    async def finalize_or_crash(temporary_path):
        if temporary_path.get_final().name == str(crash_step):
            os.kill(os.getpid(), signal.SIGKILL)
        await finalize(temporary_path)
    return finalize_or_crash


if __name__ == "__main__":
    crash = [arg for arg in sys.argv[1:] if arg.startswith(CRASH_FLAG)]
    if crash:
        sys.argv.remove(crash[0])
        atomicity.AtomicRenameTemporaryPath.finalize = crashing_in_save(
            atomicity.AtomicRenameTemporaryPath.finalize, int(crash[0][len(CRASH_FLAG):]))
    pipeline.train_batches = announcing(pipeline.train_batches)
    app.run(main.main)
