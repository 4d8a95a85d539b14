"""Orbax checkpoints: keep the latest step (for resume) and the best by a validation metric;
SIGTERM (a preemption notice) as a request to stop training with a checkpoint.

Each checkpoint holds the train state and a small JSON record of what produced it (the model
config), so that a workdir holding another model's checkpoint refuses to resume instead of
failing deep inside a restore or, worse, loading mismatched weights.

A save is atomic: Orbax writes `<step>.orbax-checkpoint-tmp-<time>/` and renames it to `<step>/`
when complete (on object stores it writes `commit_success.txt` last instead). A process killed
mid-save leaves only the temporary folder, which listing, resuming and evaluating ignore.
"""
import contextlib
import dataclasses
import logging as python_logging
import signal
import threading
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies


class CheckpointMismatchError(ValueError):
    """The workdir holds a checkpoint that this run cannot resume or evaluate: of another model,
    optimizer chain, or selection of training and validation examples."""


def create_manager(directory: str | Path, *, best_metric: str = "dice", best_mode: str = "max",
                   remove_partial: bool = False) -> ocp.CheckpointManager:
    """A manager keeping the latest checkpoint and the best one by `best_metric`.

    Checkpoints saved without metrics (periodic, preemption) count for "latest" only: they are
    never ranked by `best_step()` and are deleted once a newer checkpoint exists. With
    `remove_partial`, the temporary folders of saves a crash interrupted are deleted; only the
    training run's manager may do that (an evaluation beside a running training must not delete
    its save in progress).
    """
    best_sign = 1.0 if best_mode == "max" else -1.0
    options = ocp.CheckpointManagerOptions(
        # Preservation policies keep latest AND best; `best_fn` + `max_to_keep` would delete the
        # newest step when it is not among the best, which breaks resume.
        preservation_policy=policies.AnyPreservationPolicy([
            policies.LatestN(n=1),
            policies.BestN(get_metric_fn=lambda metrics: best_sign * metrics[best_metric],
                           reverse=False, n=1, keep_checkpoints_without_metrics=False),
        ]),
        best_fn=lambda metrics: metrics[best_metric],  # only so that best_step() answers
        best_mode=best_mode,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=remove_partial,
    )
    return ocp.CheckpointManager(Path(directory).resolve(), options=options,
                                 item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                "run": ocp.JsonCheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, state: Any, run_info: dict,
         metrics: dict[str, float] | None = None) -> None:
    """Saves `state` at `step`; `metrics` (validation scalars) rank it among the best, and a
    checkpoint without them (periodic, preemption) serves resuming only."""
    with contextlib.nullcontext() if metrics is not None else _without_missing_metrics_warning():
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   run=ocp.args.JsonSave(run_info)),
                     metrics=metrics, force=True)


def _not_missing_metrics_warning(record: python_logging.LogRecord) -> bool:
    return "did not provide metrics" not in record.getMessage()


@contextlib.contextmanager
def _without_missing_metrics_warning():
    """Silences Orbax's warning that a checkpoint of a best-tracking manager has no metrics:
    periodic and preemption checkpoints have none on purpose."""
    absl_logger = python_logging.getLogger("absl")
    absl_logger.addFilter(_not_missing_metrics_warning)
    try:
        yield
    finally:
        absl_logger.removeFilter(_not_missing_metrics_warning)


def architecture(model_record: dict | None, defaults: dict | None = None) -> dict | None:
    """A model record without its compute dtype, and without the fields at their `defaults`
    (the model class's): what must match for parameters to fit. Leaving the defaults out lets
    a checkpoint recorded before a model gained a field match a run that leaves it unset."""
    if model_record is None:
        return None
    defaults = defaults or {}
    return {key: value for key, value in model_record.items()
            if key != "dtype" and not (key in defaults and defaults[key] == value)}


def restore(manager: ocp.CheckpointManager, step: int, target_state: Any,
            run_info: dict, *, check_data: bool = True) -> tuple[Any, dict]:
    """Restores `step` into arrays shaped and sharded like `target_state`.

    Returns the state and the saved run info. Raises CheckpointMismatchError when the saved
    model config differs from `run_info["model"]` in anything but the compute dtype and fields
    at their defaults (`run_info["model_defaults"]`; see `architecture`) (parameters
    are float32 in every precision, so a run may resume or be evaluated in another), or when the
    optimizer state was built by another optimizer chain (`run_info["optimizer"]`; checkpoints
    written before it was recorded are not checked). With `check_data`, also when the
    checkpoint was trained on the same dataset (`run_info["dataset"]`) but with another data
    selection (`run_info["data"]`: splits, cross-validation fold; see `check_data_selection`).
    """
    saved_info = manager.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))["run"]
    defaults = run_info.get("model_defaults")
    if architecture(saved_info.get("model"), defaults) != architecture(run_info["model"], defaults):
        raise CheckpointMismatchError(
            f"{manager.directory} holds a checkpoint (step {step}) of model {saved_info.get('model')}, "
            f"but this run's model is {run_info['model']}. Use another --workdir, or the config "
            "that wrote the checkpoint.")
    saved_optimizer = saved_info.get("optimizer")
    if saved_optimizer is not None and saved_optimizer != run_info.get("optimizer"):
        raise CheckpointMismatchError(
            f"{manager.directory} holds a checkpoint (step {step}) whose optimizer state was made by "
            f"{saved_optimizer}, but this run's optimizer is {run_info.get('optimizer')}: the states do "
            "not fit one another. Set config.train.optimizer / config.train.grad_clip_norm / "
            "config.train.ema_decay (0 or not) as they were, or use another --workdir.")
    if check_data:
        check_data_selection(saved_info, run_info, f"{manager.directory} (step {step})")
    abstract_state = jax.tree.map(
        lambda array: jax.ShapeDtypeStruct(array.shape, array.dtype, sharding=array.sharding),
        target_state)
    target = restore_target(manager, step, abstract_state)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    if target is not abstract_state:
        restored = target_state.replace(**restored)
    return restored, saved_info


def restore_target(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
    """What to restore checkpoint `step` into: `abstract_state` itself, or, for a checkpoint
    written before the state (a dataclass) gained a field that holds nothing here (None, e.g.
    TrainState.ema of a run without moving averages), a dict of the fields the checkpoint
    holds; Orbax refuses a target with a field the checkpoint lacks, even an empty one. Raises
    CheckpointMismatchError when a missing field holds arrays here."""
    if not dataclasses.is_dataclass(abstract_state):
        return abstract_state
    saved_fields = set(manager.item_metadata(step)["state"].keys())
    fields = {field.name: getattr(abstract_state, field.name) for field in dataclasses.fields(abstract_state)}
    missing = fields.keys() - saved_fields
    if not missing:
        return abstract_state
    needed = sorted(name for name in missing if fields[name] is not None)
    if needed:
        raise CheckpointMismatchError(
            f"{manager.directory} holds a checkpoint (step {step}) without {needed}, which this run's "
            "state needs: it was written by a run without them (e.g. `ema` without "
            "config.train.ema_decay). Set the config as that run had it, or use another --workdir.")
    return {name: value for name, value in fields.items() if name not in missing}


def check_data_selection(saved_info: dict, run_info: dict, where: str) -> None:
    """Raises CheckpointMismatchError when the checkpoint `where` was trained on this run's
    dataset with another selection of training and validation examples: resuming would mix
    two training sets, and evaluating would choose the checkpoint's threshold on, or report as
    held out, images it may have trained on (e.g. a cross-validation fold's workdir evaluated
    without its fold). Another dataset (a cross-dataset evaluation) and checkpoints written
    before the selection was recorded are not checked."""
    saved, current = saved_info.get("data"), run_info.get("data")
    if saved is None or saved_info.get("dataset") != run_info.get("dataset") or saved == current:
        return
    raise CheckpointMismatchError(
        f"{where} was trained on {saved_info.get('dataset')!r} with data selection {saved}, but "
        f"this run selects {current}. Pass {' '.join(data_flags(saved))} (as the run that wrote "
        "it did), or use another --workdir.")


def data_flags(data: dict) -> list[str]:
    """The command-line overrides that select the examples of a recorded data selection."""
    flags = [f"--config.dataset.{key}={data[key]}" for key in ("train_split", "validation_split")]
    folds = data.get("cross_validation") or {"num_folds": 0}
    return flags + [f"--config.dataset.cross_validation.{key}={value}" for key, value in folds.items()]


class PreemptionNotice:
    """SIGTERM, the usual preemption notice, as a request to stop training at a step that every
    process agrees on. Use it as a context manager around the training loop and ask
    `reached(step)` after each step.

    One process: a SIGTERM handler, installed for the `with` block only (the previous handler is
    restored after), records the notice, and `reached` reads that flag: no device sync, no
    collective. Several processes: JAX's preemption service (on by default with
    jax.distributed) catches SIGTERM on any process and picks the step every process stops at;
    `reached` asks it. Where neither can work (several processes with the service switched off,
    or training outside the main thread), SIGTERM keeps its usual effect and a warning says so.
    """

    def __init__(self):
        self.received = False
        self._multiprocess = False
        self._previous_handler = None

    def __enter__(self) -> "PreemptionNotice":
        self._multiprocess = jax.process_count() > 1
        if self._multiprocess:
            if not jax.config.jax_enable_preemption_service:
                logging.warning("jax_enable_preemption_service is off: SIGTERM ends this run "
                                "without a checkpoint.")
            return self
        if threading.current_thread() is not threading.main_thread():
            logging.warning("Training outside the main thread: SIGTERM ends this run without a "
                            "checkpoint.")
            return self
        previous = signal.getsignal(signal.SIGTERM)
        if previous is None:  # installed outside Python, so it could not be put back
            logging.warning("SIGTERM has a handler from outside Python; leaving it in place.")
            return self
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def _on_sigterm(self, signum, frame) -> None:
        self.received = True

    def reached(self, step: int) -> bool:
        """Whether training should stop after `step` (all processes answer alike)."""
        if self._multiprocess:
            return (jax.config.jax_enable_preemption_service
                    and multihost_utils.reached_preemption_sync_point(step))
        return self.received


def evaluation_step(manager: ocp.CheckpointManager, which: str) -> int:
    """The step evaluation, prediction and Grad-CAM use: the best-ranked checkpoint (`which` =
    "best"; the latest when none is ranked yet) or the latest ("latest")."""
    if which not in ("best", "latest"):
        raise ValueError(f"config.eval.checkpoint must be 'best' or 'latest', got {which!r}.")
    step = manager.best_step() if which == "best" else None
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"No checkpoint in {manager.directory}; train first "
                                "(--mode=train with the same --workdir).")
    return step
