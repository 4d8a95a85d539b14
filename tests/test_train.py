import csv
import functools
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from retina_jax import checkpoint, parallel, train
from retina_jax.ops import onednn_conv

REPO = Path(__file__).resolve().parents[1]
# Seed vessel set, width-8 U-Net, batch 16: validation Dice after this many steps, the floor both
# precisions must clear and the gap allowed. The bounds sit above the seed-to-seed spread, which
# at 150 steps is as large as the gap between the precisions, and which differs between this
# project's machines. Measured 2026-11-27, compiled with optimisations: on one machine seed 0
# gave float32 0.725, bfloat16 0.697; on another (AMD EPYC, AVX-512 BF16), seeds 0 / 1 / 2 gave
# float32 0.728 / 0.770 / 0.726 and bfloat16 0.659 / 0.700 / 0.736 (seed 0's gap 0.069, the
# means' 0.043).
BF16_CONVERGENCE_STEPS = 150
BF16_CONVERGENCE_MIN_DICE = 0.6
BF16_CONVERGENCE_MAX_GAP = 0.1


def compiled_train_state(model, tx, image_shape, ema=False):
    """`train.create_train_state` from key 0, compiled as `Experiment` compiles it: run op by op,
    the states and steps of two tests here took 40 s."""
    return jax.jit(functools.partial(train.create_train_state, model, tx, image_shape=image_shape,
                                     ema=ema))(jax.random.key(0))


def saved_state(config, workdir):
    """The latest checkpointed train state of `workdir`, as numpy."""
    experiment = train.Experiment(config)
    manager = checkpoint.create_manager(Path(workdir) / "checkpoints")
    state, _ = train.restore_or_initial(experiment, manager, manager.latest_step())
    return jax.device_get(state)


def without_timing(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key != "train_seconds"}


def test_a_few_steps_lower_the_loss(smoke_config):
    smoke_config.train.learning_rate = 1e-2
    smoke_config.train.num_steps = 100  # the schedule stays near its peak
    smoke_config.model.dropout = 0.0
    experiment = train.Experiment(smoke_config)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 64, 64, 1)).astype(np.float32)
    batch = {"image": images, "mask": (images > 0.5).astype(np.float32), "labelled": np.ones(8, np.float32)}
    state, losses_seen = experiment.initial_state, []
    for _ in range(10):
        state, step_metrics = experiment.train_step(state, parallel.to_global_batch(batch, experiment.mesh))
        losses_seen.append(float(step_metrics["loss"]))
    assert losses_seen[-1] < losses_seen[0] * 0.9, losses_seen
    assert all(b < a for a, b in zip(losses_seen[1:], losses_seen[2:])), losses_seen
    assert int(state.step) == 10


def test_resumed_run_equals_uninterrupted_run(smoke_config, tmp_path, caplog):
    straight = train.train_and_evaluate(smoke_config, tmp_path / "straight")
    again = train.train_and_evaluate(smoke_config, tmp_path / "again")
    assert without_timing(straight) == without_timing(again)  # same command twice, same numbers

    smoke_config.train.stop_at_step = 2
    halfway = train.train_and_evaluate(smoke_config, tmp_path / "chained")
    assert not (tmp_path / "chained" / "metrics.json").exists()
    assert halfway["num_examples"] == 173
    saved_config = json.loads((tmp_path / "chained" / "config.json").read_text())
    assert saved_config["train"]["stop_at_step"] == 2
    assert saved_config["model"]["name"] == smoke_config.model.name
    smoke_config.train.stop_at_step = 0
    with caplog.at_level("INFO"):
        resumed = train.train_and_evaluate(smoke_config, tmp_path / "chained")
    assert "train.stop_at_step: 2 -> 0" in caplog.text
    saved_config["train"]["stop_at_step"] = 0
    assert json.loads((tmp_path / "chained" / "config.json").read_text()) == saved_config
    assert without_timing(resumed) == without_timing(straight)
    assert resumed["step"] == 4

    state_straight = saved_state(smoke_config, tmp_path / "straight")
    state_resumed = saved_state(smoke_config, tmp_path / "chained")
    jax.tree.map(np.testing.assert_array_equal, state_straight, state_resumed)
    written = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert written["step"] == 4 and written["train_seconds"] > 0
    assert written["host_cpu"] == onednn_conv.host_cpu()
    assert {"dice", "iou", "precision", "recall", "specificity", "accuracy", "auc_roc"} <= set(written)

    # Rerunning a finished run trains nothing more and reports the same metrics.
    rerun = train.train_and_evaluate(smoke_config, tmp_path / "straight")
    assert without_timing(rerun) == without_timing(straight)


@pytest.mark.parametrize("spent_seconds, max_steps, expected", [
    (10.0, 1000, 50),   # (100 - 10) s left at 2 s a step: 45 steps after step 5
    (10.0, 30, 30),     # the config's num_steps caps it
    (99.0, 1000, 5),    # not even one more step fits
    (120.0, 1000, 5),   # already over: stop where it stands, never below
])
def test_budgeted_num_steps(spent_seconds, max_steps, expected):
    assert train.budgeted_num_steps(100.0, spent_seconds, 5, 2.0, max_steps) == expected


def test_a_time_budget_fits_num_steps_after_warm_up_and_that_length_reproduces_the_run(
        smoke_config, tmp_path, monkeypatch):
    fits = []
    def fit_to_three(*args):
        fits.append(args)
        return 3
    monkeypatch.setattr(train, "budgeted_num_steps", fit_to_three)
    smoke_config.train.time_budget_minutes = 5.0
    budgeted = train.train_and_evaluate(smoke_config, tmp_path / "budgeted")
    (budget, spent, step, step_seconds, max_steps), = fits
    assert (budget, step, max_steps) == (300.0, 2, 4)  # warm-up is 1 step: fitted after step 2
    assert spent > 0 and step_seconds > 0
    assert budgeted["step"] == 3
    assert budgeted["time_budget"]["num_steps"] == 3 and budgeted["time_budget"]["configured_num_steps"] == 4
    assert budgeted["time_budget"]["timed_steps"] == 1  # step 2, timed after step 1's compilation
    assert json.loads((tmp_path / "budgeted" / "config.json").read_text())["train"]["num_steps"] == 3
    assert json.loads((tmp_path / "budgeted" / "metrics.json").read_text())["time_budget"] == budgeted["time_budget"]

    # Stopped before the fit, then resumed: this process starts at the fitting step.
    smoke_config.train.stop_at_step = 1
    train.train_and_evaluate(smoke_config, tmp_path / "chained")
    smoke_config.train.stop_at_step = 0
    resumed = train.train_and_evaluate(smoke_config, tmp_path / "chained")
    assert resumed["step"] == 3 and resumed["time_budget"]["timed_steps"] == 2  # the run's mean
    assert len(fits) == 2

    # Rerun once fitted, it keeps the recorded length and fits nothing again.
    assert train.train_and_evaluate(smoke_config, tmp_path / "budgeted")["step"] == 3
    assert len(fits) == 2

    smoke_config.train.time_budget_minutes = 0.0
    smoke_config.train.num_steps = 3
    fixed = train.train_and_evaluate(smoke_config, tmp_path / "fixed")
    assert without_timing(fixed) == without_timing({key: value for key, value in budgeted.items()
                                                    if key != "time_budget"})
    for workdir in ("budgeted", "chained"):
        jax.tree.map(np.testing.assert_array_equal, saved_state(smoke_config, tmp_path / "fixed"),
                     saved_state(smoke_config, tmp_path / workdir))


def test_a_spent_time_budget_ends_the_run_at_the_end_of_warm_up(smoke_config, tmp_path):
    smoke_config.train.time_budget_minutes = 1e-6
    final = train.train_and_evaluate(smoke_config, tmp_path)
    assert final["step"] == 2 and final["time_budget"]["num_steps"] == 2
    assert (tmp_path / "eval" / "validation" / "metrics.json").exists()


def test_a_time_budget_switched_on_after_warm_up_refuses_to_resume(smoke_config, tmp_path):
    smoke_config.train.stop_at_step = 3
    train.train_and_evaluate(smoke_config, tmp_path)
    smoke_config.train.update(stop_at_step=0, time_budget_minutes=5.0)
    with pytest.raises(ValueError, match="resumes at step 3 without a fitted length.*time_budget_minutes=0"):
        train.train_and_evaluate(smoke_config, tmp_path)
    smoke_config.train.time_budget_minutes = -1.0
    with pytest.raises(ValueError, match="time_budget_minutes must be >= 0"):
        train.Experiment(smoke_config)


def nan_batch_at(train_batches, bad_step: int):
    """`pipeline.train_batches` whose batch for training step `bad_step` is all NaN pixels."""
    def batches(*args, start_step: int, **kwargs):
        for step, batch in enumerate(train_batches(*args, start_step=start_step, **kwargs),
                                     start=start_step + 1):
            yield {**batch, "image": np.full_like(batch["image"], np.nan)} if step == bad_step else batch
    return batches


def test_nan_batch_stops_training_naming_its_step_and_keeps_the_last_good_checkpoint(
        smoke_config, tmp_path, monkeypatch):
    smoke_config.train.num_steps = 8
    smoke_config.train.eval_every = 3  # checks at steps 3 and 6: step 5 is found at step 6
    smoke_config.train.log_every = 3
    monkeypatch.setattr(train.pipeline, "train_batches", nan_batch_at(train.pipeline.train_batches, 5))
    with pytest.raises(train.NonFiniteError, match=r"step 5 produced a non-finite value \(loss nan, "
                       r"gradient norm nan\); .* the last good checkpoint is step 3 in "):
        train.train_and_evaluate(smoke_config, tmp_path)
    assert checkpoint.create_manager(tmp_path / "checkpoints").all_steps() == [3]


@pytest.mark.parametrize("losses, grad_norms, first_bad_step", [
    ([0.9, 0.8, 0.7], [2.0, 1.5, 1.0], None),
    ([0.9, np.nan, np.nan], [2.0, np.nan, np.nan], 11),
    ([0.9, 0.8, 0.7], [2.0, np.inf, np.nan], 11),  # a finite loss, an infinite gradient
    ([-np.inf, 0.8, 0.7], [2.0, 1.5, 1.0], 10),
])
def test_first_non_finite_step(losses, grad_norms, first_bad_step):
    step_metrics = [{"loss": np.float32(loss), "grad_norm": np.float32(norm)}
                    for loss, norm in zip(losses, grad_norms)]
    found = train.first_non_finite(step_metrics, first_step=10)
    assert (None if found is None else found[0]) == first_bad_step
    if found is not None:
        assert found[1] is step_metrics[first_bad_step - 10]


def test_gradient_clipping_bounds_what_the_optimizer_sees_and_zero_keeps_it_unchanged(smoke_config):
    params = {"w": jnp.zeros(4)}
    huge = {"w": jnp.array([3e4, -4e4, 0.0, 0.0])}  # global norm 5e4
    small = {"w": jnp.array([0.03, -0.04, 0.0, 0.0])}  # global norm 0.05

    def two_updates(tx, grads):
        state = tx.init(params)
        for _ in range(2):  # the first update has learning rate 0 (warm-up)
            updates, state = tx.update(grads, state, params)
        return updates, state

    assert smoke_config.train.grad_clip_norm == 0
    unclipped = train.make_optimizer(smoke_config)
    bare = optax.adam(train.learning_rate_schedule(smoke_config))
    for grads in (huge, small):  # 0: exactly the optimizer without clipping, state and all
        jax.tree.map(np.testing.assert_array_equal, two_updates(unclipped, grads), two_updates(bare, grads))

    smoke_config.train.grad_clip_norm = 1.0
    clipped = train.make_optimizer(smoke_config)
    _, state = two_updates(clipped, huge)
    # Adam's first moment after two steps of gradient g is (1 - 0.9^2) g: here g has norm 1.
    np.testing.assert_allclose(optax.tree.get(state, "mu")["w"], 0.19 * np.array([0.6, -0.8, 0, 0]),
                               rtol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, two_updates(clipped, small)[0], two_updates(bare, small)[0])

    smoke_config.train.grad_clip_norm = -1.0
    with pytest.raises(ValueError, match="grad_clip_norm must be >= 0"):
        train.make_optimizer(smoke_config)


def test_deep_supervision_loss_is_the_mean_over_the_sown_heads(smoke_config):
    smoke_config.model.side_heads = True
    smoke_config.model.dropout = 0.0
    model = train.build_model(smoke_config)
    tx = train.make_optimizer(smoke_config)
    state = compiled_train_state(model, tx, (16, 16, 1))
    images = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
    batch = {"image": images, "mask": (images > 0.5).astype(jnp.float32), "labelled": jnp.ones(2)}
    batch_loss = train.segmentation_loss("bce_dice")

    @jax.jit
    def head_losses(params, batch_stats):
        _, sown = model.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                              mutable=["batch_stats", "intermediates"])
        return [batch_loss(side, batch) for side in sown["intermediates"]["side_logits"]]

    per_head = [float(loss) for loss in head_losses(state.params, state.batch_stats)]
    assert len(per_head) == 4 and max(per_head) - min(per_head) > 1e-3
    step = jax.jit(functools.partial(train.train_step, model=model, tx=tx, batch_loss=batch_loss,
                                     dropout_key=jax.random.key(2)), static_argnames="deep_supervision")
    _, supervised = step(state, batch, deep_supervision=True)
    np.testing.assert_allclose(supervised["loss"], np.mean(per_head), rtol=1e-5)
    _, output_only = step(state, batch, deep_supervision=False)
    np.testing.assert_allclose(output_only["loss"], per_head[-1], rtol=1e-5)

    smoke_config.model.side_heads = False
    model = train.build_model(smoke_config)
    with pytest.raises(ValueError, match="deep_supervision needs a model that sows side logits.*UNet sowed none"):
        jax.jit(functools.partial(train.train_step, model=model, tx=tx, batch_loss=batch_loss,
                                  dropout_key=jax.random.key(2), deep_supervision=True))(state, batch)


def test_moving_averages_follow_the_weights_with_the_warm_up_decay(smoke_config):
    smoke_config.model.dropout = 0.0
    model = train.build_model(smoke_config)
    tx = train.make_optimizer(smoke_config)
    state = compiled_train_state(model, tx, (16, 16, 1), ema=True)
    assert train.evaluation_variables(state) is state.ema
    images = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
    batch = {"image": images, "mask": (images > 0.5).astype(jnp.float32), "labelled": jnp.ones(2)}
    step = jax.jit(functools.partial(train.train_step, model=model, tx=tx, dropout_key=jax.random.key(2),
                                     batch_loss=train.segmentation_loss("bce_dice"), ema_decay=0.9))
    first = step(state, batch)[0]
    second = step(first, batch)[0]
    # Step 0 keeps min(0.9, 1/10) of the old average, step 1 min(0.9, 2/11).
    for before, after, kept in ((state, first, 0.1), (first, second, 2 / 11)):
        weights = {"params": after.params, "batch_stats": after.batch_stats}
        expected = jax.tree.map(lambda average, new: kept * average + (1 - kept) * new, before.ema, weights)
        jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7), after.ema, expected)
    assert any(not np.allclose(average, weight) for average, weight in
               zip(jax.tree.leaves(second.ema["params"]), jax.tree.leaves(second.params)))
    plain = compiled_train_state(model, tx, (16, 16, 1))
    assert plain.ema is None and step(plain, batch)[0].ema is None
    assert train.evaluation_variables(plain) == {"params": plain.params, "batch_stats": plain.batch_stats}


def test_a_run_with_moving_averages_resumes_exactly_and_evaluates_them(smoke_config, tmp_path):
    smoke_config.train.ema_decay = 0.5
    straight = train.train_and_evaluate(smoke_config, tmp_path / "straight")
    smoke_config.train.stop_at_step = 2
    train.train_and_evaluate(smoke_config, tmp_path / "chained")
    smoke_config.train.stop_at_step = 0
    resumed = train.train_and_evaluate(smoke_config, tmp_path / "chained")
    assert without_timing(resumed) == without_timing(straight)
    state = saved_state(smoke_config, tmp_path / "straight")
    jax.tree.map(np.testing.assert_array_equal, state, saved_state(smoke_config, tmp_path / "chained"))
    assert state.ema is not None
    smoke_config.train.ema_decay = 0.0
    without_averages = train.train_and_evaluate(smoke_config, tmp_path / "plain")
    assert without_averages["dice"] != straight["dice"]  # the same weights, evaluated otherwise
    with pytest.raises(checkpoint.CheckpointMismatchError, match="'ema': True.*ema_decay"):
        train.train_and_evaluate(smoke_config, tmp_path / "straight")
    smoke_config.train.ema_decay = 1.0
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        train.Experiment(smoke_config)


def test_a_checkpoint_written_before_the_state_had_moving_averages_restores(smoke_config, tmp_path):
    """Such a checkpoint holds step, params, batch_stats and opt_state only (no `ema` entry at
    all): a run without moving averages restores it, one with them is refused by name."""
    experiment = train.Experiment(smoke_config)
    initial = experiment.initial_state
    fields = {"step": initial.step + 3, "params": jax.tree.map(lambda leaf: leaf + 1, initial.params),
              "batch_stats": initial.batch_stats, "opt_state": initial.opt_state}
    manager = checkpoint.create_manager(tmp_path)
    old_run_info = {key: value for key, value in experiment.run_info.items() if key != "optimizer"}
    checkpoint.save(manager, 3, fields, old_run_info, metrics={"dice": 0.5})
    restored, _ = checkpoint.restore(manager, 3, initial, experiment.run_info)
    assert isinstance(restored, train.TrainState) and restored.ema is None and int(restored.step) == 3
    jax.tree.map(np.testing.assert_array_equal, restored.params, jax.device_get(fields["params"]))
    smoke_config.train.ema_decay = 0.5
    averaging = train.Experiment(smoke_config)
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"without \['ema'\].*ema_decay"):
        checkpoint.restore(manager, 3, averaging.initial_state, averaging.run_info)


def test_a_checkpoint_recorded_before_a_model_field_existed_matches_that_field_at_its_default():
    defaults = {"features": 16, "side_heads": False, "dtype": "float32"}
    saved = {"name": "unet", "features": 8, "dtype": "float32"}  # written before side_heads existed
    assert checkpoint.architecture(saved, defaults) == checkpoint.architecture(
        {**saved, "side_heads": False, "dtype": "bfloat16"}, defaults) == {"name": "unet", "features": 8}
    assert checkpoint.architecture(saved, defaults) != checkpoint.architecture(
        {**saved, "side_heads": True}, defaults)
    assert checkpoint.architecture(saved, defaults) != checkpoint.architecture(
        {**saved, "features": 16}, defaults)


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_state(smoke_config):
    smoke_config.dtype = "bfloat16"
    experiment = train.Experiment(smoke_config)
    assert experiment.model.dtype == jax.numpy.bfloat16
    images = np.random.default_rng(0).normal(size=(8, 64, 64, 1)).astype(np.float32)
    batch = {"image": images, "mask": (images > 0.5).astype(np.float32), "labelled": np.ones(8, np.float32)}
    state, step_metrics = experiment.train_step(experiment.initial_state,
                                                parallel.to_global_batch(batch, experiment.mesh))
    leaves = jax.tree.leaves((state.params, state.batch_stats, state.opt_state))
    assert {leaf.dtype for leaf in leaves if leaf.ndim} == {np.dtype(np.float32)}
    assert step_metrics["loss"].dtype == np.float32 and np.isfinite(step_metrics["loss"])
    hlo = jax.jit(lambda x: experiment.model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, x, train=False)).lower(images).as_text()
    assert "bf16" in hlo  # the convolutions really run in bfloat16


def test_compute_dtype_is_checked_and_does_not_block_resuming(smoke_config, tmp_path):
    smoke_config.dtype = "float16"
    with pytest.raises(ValueError, match="config.dtype must be one of"):
        train.build_model(smoke_config)
    smoke_config.dtype = "float32"
    smoke_config.train.stop_at_step = 2
    train.train_and_evaluate(smoke_config, tmp_path)
    smoke_config.dtype, smoke_config.train.stop_at_step = "bfloat16", 0
    assert train.train_and_evaluate(smoke_config, tmp_path)["step"] == 4


@pytest.mark.slow
def test_bfloat16_training_converges_like_float32_on_the_seed_vessels(smoke_config, tmp_path):
    smoke_config.model.features = 8
    smoke_config.train.batch_size = 16
    smoke_config.train.num_steps = BF16_CONVERGENCE_STEPS
    smoke_config.train.eval_every = BF16_CONVERGENCE_STEPS
    smoke_config.train.log_every = BF16_CONVERGENCE_STEPS
    smoke_config.train.warmup_steps = 10
    # 150 steps outweigh the compile: with optimisations both runs are faster (measured on the
    # first machine above: float32 52 s against 87 s; bfloat16 93 s against ~200 s without
    # fusion of its conversions).
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        full = train.train_and_evaluate(smoke_config, tmp_path / "float32")
        smoke_config.dtype = "bfloat16"
        mixed = train.train_and_evaluate(smoke_config, tmp_path / "bfloat16")
    finally:
        jax.config.update("jax_disable_most_optimizations", True)
    assert full["dice"] > BF16_CONVERGENCE_MIN_DICE, full
    assert mixed["dice"] > BF16_CONVERGENCE_MIN_DICE, mixed
    assert abs(mixed["dice"] - full["dice"]) < BF16_CONVERGENCE_MAX_GAP, (mixed["dice"], full["dice"])


def test_workdir_of_another_model_refuses_to_resume(smoke_config, tmp_path):
    smoke_config.train.stop_at_step = 2
    train.train_and_evaluate(smoke_config, tmp_path)
    smoke_config.model.features = 8
    with pytest.raises(checkpoint.CheckpointMismatchError, match="'features': 4"):
        train.train_and_evaluate(smoke_config, tmp_path)


def test_workdir_of_another_optimizer_chain_refuses_to_resume(smoke_config, tmp_path):
    smoke_config.train.stop_at_step = 2
    train.train_and_evaluate(smoke_config, tmp_path)
    smoke_config.train.grad_clip_norm = 1.0  # adds a clipping state in front of Adam's
    with pytest.raises(checkpoint.CheckpointMismatchError, match="'grad_clip': False.*grad_clip_norm"):
        train.train_and_evaluate(smoke_config, tmp_path)
    smoke_config.train.grad_clip_norm = 0.0
    smoke_config.train.stop_at_step = 0
    assert train.train_and_evaluate(smoke_config, tmp_path)["num_examples"] == 173


def test_workdir_of_another_data_selection_refuses_to_resume_or_evaluate(smoke_config, tmp_path):
    smoke_config.train.stop_at_step = 2
    train.train_and_evaluate(smoke_config, tmp_path)
    smoke_config.dataset.cross_validation.update(num_folds=2, fold=1)
    expected_flags = ("--config.dataset.train_split=train --config.dataset.validation_split=validation "
                      "--config.dataset.cross_validation.num_folds=0")
    with pytest.raises(checkpoint.CheckpointMismatchError, match=expected_flags):
        train.train_and_evaluate(smoke_config, tmp_path)
    # The refused launch leaves the workdir's record of how it was trained alone.
    assert json.loads((tmp_path / "config.json").read_text())["dataset"]["cross_validation"]["num_folds"] == 0
    with pytest.raises(checkpoint.CheckpointMismatchError, match="'num_folds': 2, 'fold': 1"):
        train.evaluate(smoke_config, tmp_path)
    # Predicting a user's images does not depend on the examples the model trained on.
    _, step = train.restore_evaluation_checkpoint(train.Experiment(smoke_config), tmp_path)
    assert step == 2


def test_data_selection_is_checked_on_the_same_dataset_only():
    fold_0 = {"dataset": "drive", "data": {"train_split": "train", "validation_split": "validation",
                                           "cross_validation": {"num_folds": 5, "fold": 0}}}
    fold_1 = {"dataset": "drive", "data": {**fold_0["data"], "cross_validation": {"num_folds": 5, "fold": 1}}}
    checkpoint.check_data_selection(fold_0, fold_0, "here")
    checkpoint.check_data_selection(fold_0, {**fold_1, "dataset": "chase_db1"}, "here")  # cross-dataset
    checkpoint.check_data_selection({"dataset": "drive"}, fold_1, "here")  # written before the record
    with pytest.raises(checkpoint.CheckpointMismatchError,
                       match="cross_validation.num_folds=5 --config.dataset.cross_validation.fold=0"):
        checkpoint.check_data_selection(fold_0, fold_1, "here")


def test_evaluate_writes_metrics_and_overlays_and_handles_unlabelled_split(smoke_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        train.evaluate(smoke_config, tmp_path)
    final = train.train_and_evaluate(smoke_config, tmp_path)
    results = train.evaluate(smoke_config, tmp_path)
    assert results["num_examples"] == 173
    assert results["checkpoint_step"] in (2, 4)
    written = json.loads((tmp_path / "eval" / "validation" / "metrics.json").read_text())
    assert written == results
    if results["checkpoint_step"] == 4:
        assert results["dice"] == pytest.approx(final["dice"])
    assert (tmp_path / "eval" / "validation" / "overlays.png").stat().st_size > 0
    assert (tmp_path / "learning_curves.png").stat().st_size > 0  # from the run's logged scalars
    per_case = list(csv.DictReader((tmp_path / "eval" / "validation" / "per_case.csv").open()))
    assert len(per_case) == 173 and len({row["id"] for row in per_case}) == 173
    assert np.mean([float(row["dice"]) for row in per_case]) == pytest.approx(results["dice_per_case_mean"])
    assert sum(int(row["tp"]) for row in per_case) * 2 / sum(
        2 * int(row["tp"]) + int(row["fp"]) + int(row["fn"]) for row in per_case) == pytest.approx(results["dice"])

    smoke_config.eval.split = "test"
    unlabelled = train.evaluate(smoke_config, tmp_path)
    assert unlabelled == {"num_examples": 174, "labelled": False, "checkpoint_step": results["checkpoint_step"],
                          "inference_scale": 1.0}


def test_one_step_on_one_device_equals_four_devices():
    output = subprocess.run([sys.executable, str(REPO / "tests" / "multidevice_step.py"), "4"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert output.returncode == 0, output.stderr[-3000:]
    result = json.loads(output.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4
    assert result["max_param_change"] > 1e-3  # the steps did move the parameters
    assert result["max_param_diff"] < 1e-5, result
    assert result["max_stats_diff"] < 1e-5, result
    np.testing.assert_allclose(result["losses_multi"], result["losses_single"], rtol=1e-5)


def run_main(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "retina_jax.main", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


@pytest.mark.slow
def test_main_trains_then_evaluates_end_to_end_with_the_trained_config(tfds_dir, vessel_builder, tmp_path):
    """Trained with overrides of the model and of its preprocessing, evaluated without them:
    evaluation reads them back from the workdir's config.json and scores as training did."""
    common = ["--config=configs/vessels.py:smoke", f"--workdir={tmp_path}",
              f"--config.dataset.data_dir={tfds_dir}"]
    trained = run_main(*common, "--config.model.features=6", "--config.input.gamma=0.7")
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["step"] == 4
    validation_path = tmp_path / "eval" / "validation" / "metrics.json"
    scored_by_training = json.loads(validation_path.read_text())
    evaluated = run_main(*common, "--mode=evaluate", "--config.eval.split=validation")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "input.gamma: 1.0 -> 0.7; model.features: 4 -> 6" in evaluated.stderr
    scored_again = json.loads(validation_path.read_text())
    assert scored_again["num_examples"] == 173
    for key in ("checkpoint_step", "dice", "iou", "auc_roc"):
        assert scored_again[key] == pytest.approx(scored_by_training[key], abs=1e-6), key


def test_main_rejects_misspelt_config_key_and_unknown_names(tmp_path):
    misspelt = run_main("--config=configs/vessels.py:smoke", f"--workdir={tmp_path}", "--config.train.num_stepz=3")
    assert misspelt.returncode != 0 and "num_stepz" in misspelt.stderr
    unknown_model = run_main("--config=configs/vessels.py:smoke", f"--workdir={tmp_path}",
                             "--config.model.name=unet3000")
    assert unknown_model.returncode != 0 and "Unknown model 'unet3000'" in unknown_model.stderr
    unknown_dataset = run_main("--config=configs/vessels.py:smoke", f"--workdir={tmp_path}",
                               "--config.dataset.name=drive2")
    assert unknown_dataset.returncode != 0 and "Unknown dataset 'drive2'" in unknown_dataset.stderr


@pytest.mark.slow
def test_edema_config_trains_then_evaluates_the_test_subjects(tmp_path):
    """configs/edema.py:smoke end to end on the Duke dummy data, which has subjects 6 and 10."""
    dummy = REPO / "retina_jax" / "datasets" / "duke_dme" / "dummy_data"
    common = ["--config=configs/edema.py:smoke", f"--workdir={tmp_path}",
              f"--config.dataset.data_dir={tmp_path / 'tfds'}", f"--config.dataset.manual_dir={dummy}",
              "--config.train.batch_size=2",
              "--config.eval.batch_size=2"]
    trained = run_main(*common)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "eval/validation" in trained.stderr
    validation = list(csv.DictReader((tmp_path / "eval" / "validation" / "per_case.csv").open()))
    assert [(row["id"], row["subject"]) for row in validation] == [("img_44", "5")]
    evaluated = run_main(*common, "--mode=evaluate", "--config.eval.split=test")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    test_dir = tmp_path / "eval" / "test"
    rows = list(csv.DictReader((test_dir / "per_case.csv").open()))
    assert sorted((row["id"], row["subject"], row["bscan_index"]) for row in rows) == [
        ("img_109", "10", "50"), ("img_55", "6", "10")]
    metrics = json.loads((test_dir / "metrics.json").read_text())
    assert metrics["num_examples"] == 2 and 0.0 <= metrics["dice"] <= 1.0
    assert (test_dir / "overlays.png").stat().st_size > 0
