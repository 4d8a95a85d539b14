"""Classification task: metrics against hand-computed cases, losses, thresholds, the data path."""
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from retina_jax.data import pipeline, preprocess
from retina_jax.tasks import classification

GRADES = ["0", "1", "2"]


def test_confusion_matrix_and_qwk_match_a_hand_computed_case():
    labels, predictions = np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1])
    matrix = classification.confusion_matrix(labels, predictions, 3)
    np.testing.assert_array_equal(matrix, [[1, 0, 0], [0, 0, 1], [0, 1, 1]])
    # Weights W = (i-j)^2 / 4. Observed: sum(W * O) = 0.25 + 0.25 = 0.5. Expected counts
    # E = outer(row sums (1,1,2), column sums (1,1,2)) / 4, and sum(W * E) = 1.375 by hand.
    assert classification.quadratic_weighted_kappa(matrix) == pytest.approx(1 - 0.5 / 1.375)


def test_qwk_extremes():
    assert classification.quadratic_weighted_kappa(np.diag([3, 2, 5])) == pytest.approx(1.0)
    # Two classes, every prediction the opposite one, balanced: kappa = -1.
    assert classification.quadratic_weighted_kappa(np.array([[0, 4], [4, 0]])) == pytest.approx(-1.0)
    # One class only, predicted right: the denominator is zero; perfect agreement counts 1.
    assert classification.quadratic_weighted_kappa(np.array([[5, 0], [0, 0]])) == 1.0


def test_auc_is_exact_with_ties():
    assert classification.auc_roc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert classification.auc_roc(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)
    assert classification.auc_roc(np.array([0.2, 0.3]), np.array([1, 1])) is None
    np.testing.assert_array_equal(classification.average_ranks(np.array([3.0, 1.0, 3.0, 2.0])),
                                  [3.5, 1.0, 3.5, 2.0])


def test_summarize_softmax_matches_hand_computed_metrics():
    labels = np.array([0, 0, 0, 1])
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])  # predicts 0, 0, 1, 1
    results = classification.summarize(labels, scores, head="softmax", class_names=["a", "b"])
    assert results["num_examples"] == 4
    assert results["accuracy"] == pytest.approx(0.75)
    assert results["per_class"]["a"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "auc": 2 / 3, "support": 3})
    assert results["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert results["per_class"]["b"]["f1"] == pytest.approx(2 / 3)
    assert results["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert results["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    # Class b's probability ranks its one positive (0.6) above 2 of the 3 negatives.
    assert results["per_class"]["b"]["auc"] == pytest.approx(2 / 3)
    assert results["auc_ovr"] == pytest.approx(2 / 3)
    assert results["confusion_matrix"] == [[2, 1], [0, 1]]


def test_summarize_leaves_absent_classes_out_of_the_means():
    labels = np.array([0, 1])
    scores = np.array([[0.9, 0.05, 0.05], [0.1, 0.2, 0.7]])  # predicts 0 and 2
    results = classification.summarize(labels, scores, head="softmax", class_names=GRADES)
    assert results["per_class"]["2"]["recall"] is None and results["per_class"]["2"]["support"] == 0
    assert results["per_class"]["1"]["precision"] == 0.0  # never predicted
    assert results["balanced_accuracy"] == pytest.approx((1.0 + 0.0) / 2)
    assert results["macro_f1"] == pytest.approx((1.0 + 0.0) / 2)


def test_regression_head_predicts_by_thresholds_and_tuning_fixes_a_bias():
    labels = np.array([0, 0, 1, 1, 2, 2])
    outputs = (labels + 0.6)[:, None].astype(np.float64)  # every output 0.6 too high
    default = classification.summarize(labels, outputs, head="regression", class_names=GRADES)
    assert default["thresholds"] == [0.5, 1.5]
    assert default["accuracy"] == pytest.approx(2 / 6)
    tuned = classification.tune_thresholds(labels, outputs, 3)
    assert np.all(np.diff(tuned) > 0)
    at_tuned = classification.summarize(labels, outputs, head="regression", class_names=GRADES,
                                        thresholds=tuned)
    assert at_tuned["accuracy"] == 1.0 and at_tuned["qwk"] == pytest.approx(1.0)
    # Class k is scored by -|output - k|: class 0's examples score -0.6, the others -1.6 and
    # -2.6, so its one-vs-rest AUC is 1 whatever the thresholds.
    assert at_tuned["per_class"]["0"]["auc"] == pytest.approx(1.0)


def test_class_weights():
    np.testing.assert_allclose(classification.balanced_class_weights(np.array([10, 30, 0])),
                               [40 / 20, 40 / 60, 0.0], rtol=1e-6)
    np.testing.assert_allclose(classification.resolve_class_weights("1,2.5", np.array([3, 4])), [1.0, 2.5])
    np.testing.assert_array_equal(classification.resolve_class_weights("none", np.array([3, 4])), [1, 1])
    with pytest.raises(ValueError, match="2 comma-separated"):
        classification.resolve_class_weights("1,2,3", np.array([3, 4]))
    with pytest.raises(ValueError, match="balanced"):
        classification.resolve_class_weights("balance", np.array([3, 4]))


def test_weighted_softmax_loss_is_the_weighted_mean_and_skips_padding():
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
    batch = {"label": jnp.array([0, 0, 1]), "valid": jnp.array([1.0, 1.0, 0.0])}
    weights = jnp.array([2.0, 1.0])
    per_example = np.log1p(np.exp(-2.0)), np.log1p(np.exp(1.0))  # -log softmax of the true class
    expected = (2 * per_example[0] + 2 * per_example[1]) / 4
    value = classification.loss(logits, batch, head="softmax", class_weights=weights)
    assert float(value) == pytest.approx(expected, rel=1e-6)
    smoothed = classification.loss(logits, batch, head="softmax", class_weights=weights,
                                   label_smoothing=0.2)
    assert float(smoothed) > float(value)  # smoothing penalises the confident first example


def test_regression_loss_is_the_weighted_squared_error():
    outputs = jnp.array([[0.5], [3.0]])
    batch = {"label": jnp.array([0, 4])}
    value = classification.loss(outputs, batch, head="regression", class_weights=jnp.ones(5))
    assert float(value) == pytest.approx((0.25 + 1.0) / 2)
    with pytest.raises(ValueError, match="head"):
        classification.loss(outputs, batch, head="ordinal", class_weights=jnp.ones(5))


def test_mask_to_label_uses_the_full_resolution_mask():
    mask = np.zeros((8, 8, 1), np.uint8)
    mask[3, 5] = 1  # one pixel of fluid: a nearest-neighbour downsizing could lose it
    example = pipeline.mask_to_label({"image": tf.zeros((8, 8, 1), tf.uint8), "mask": tf.constant(mask)})
    assert "mask" not in example and int(example["label"]) == 1
    empty = pipeline.mask_to_label({"image": tf.zeros((8, 8, 1), tf.uint8),
                                    "mask": tf.zeros((8, 8, 1), tf.uint8)})
    assert int(empty["label"]) == 0


def test_resize_example_keeps_masks_binary_and_labels():
    example = {"image": tf.random.uniform((8, 12, 1)), "mask": tf.cast(tf.random.uniform((8, 12, 1)) > 0.5, tf.float32),
               "label": tf.constant(3)}
    resized = preprocess.resize_example(example, (4, 6))
    assert resized["image"].shape == (4, 6, 1) and resized["mask"].shape == (4, 6, 1)
    assert set(np.unique(resized["mask"].numpy())) <= {0.0, 1.0}
    assert int(resized["label"]) == 3


def fluid_config(tfds_dir, **overrides):
    from configs import duke_fluid
    config = duke_fluid.get_config("smoke")
    config.dataset.data_dir = tfds_dir
    config.parallel.num_devices = 1
    for key, value in overrides.items():
        section, field = key.split("__")
        config[section][field] = value
    return config


@pytest.mark.slow
def test_fluid_classifier_trains_and_writes_its_evaluation(tmp_path, tfds_dir, duke_builder):
    import json

    from retina_jax import train
    final = train.train_and_evaluate(fluid_config(tfds_dir), str(tmp_path))
    assert final["num_examples"] == 11 and 0.0 <= final["balanced_accuracy"] <= 1.0
    out_dir = tmp_path / "eval" / "validation"
    saved = json.loads((out_dir / "metrics.json").read_text())
    assert np.sum(saved["confusion_matrix"]) == 11
    assert sum(saved["confusion_matrix"][1]) == 10  # subject 5: 10 B-scans with fluid, 1 without
    rows = (out_dir / "per_case.csv").read_text().splitlines()
    assert rows[0] == "id,subject,bscan_index,label,predicted,correct,p_no_fluid,p_fluid"
    assert len(rows) == 12
    for name in ("confusion.png", "confusion.json", "roc.png"):
        assert (out_dir / name).exists(), name


@pytest.mark.slow
def test_regression_head_reuses_the_validation_thresholds_on_other_splits(tmp_path, tfds_dir, duke_builder):
    import json

    from retina_jax import train
    config = fluid_config(tfds_dir, classification__head="regression", model__num_classes=1)
    train.train_and_evaluate(config, str(tmp_path))
    validation = json.loads((tmp_path / "eval" / "validation" / "metrics.json").read_text())
    assert validation["thresholds"] == [0.5]
    tuned = validation["validation_thresholds"]
    assert validation["at_validation_thresholds"]["thresholds"] == tuned
    config.eval.split = "train"
    results = train.evaluate(config, str(tmp_path))
    assert results["num_examples"] == 44
    assert results["validation_thresholds"] == tuned
    assert results["at_validation_thresholds"]["thresholds"] == tuned


def test_softmax_head_needs_one_output_per_class(tmp_path, tfds_dir, duke_builder):
    from retina_jax import train
    with pytest.raises(ValueError, match="needs 2 output"):
        train.Experiment(fluid_config(tfds_dir, model__num_classes=3))


DATASETS_DIR = Path(__file__).resolve().parents[1] / "retina_jax" / "datasets"


def dummy_config(config_module, dataset: str, tfds_dir: str):
    config = config_module.get_config("smoke")
    config.dataset.data_dir = tfds_dir
    config.dataset.manual_dir = str(DATASETS_DIR / dataset / "dummy_data")
    config.parallel.num_devices = 1
    config.train.batch_size = 2  # the dummy train splits hold a handful of images
    config.eval.batch_size = 2
    return config


@pytest.mark.slow
def test_dr_grading_evaluates_the_official_test_layout_with_validation_thresholds(tmp_path, tfds_dir):
    import json

    from configs import dr_grading
    from retina_jax import train
    config = dummy_config(dr_grading, "idrid_grading", tfds_dir)
    train.train_and_evaluate(config, str(tmp_path))
    config.eval.split = "test"
    results = train.evaluate(config, str(tmp_path))
    assert results["num_examples"] == 2
    assert set(results) >= {"accuracy", "balanced_accuracy", "macro_f1", "auc_ovr", "qwk", "per_class"}
    validation = json.loads((tmp_path / "eval" / "validation" / "metrics.json").read_text())
    assert results["validation_thresholds"] == validation["validation_thresholds"]
    rows = (tmp_path / "eval" / "test" / "per_case.csv").read_text().splitlines()
    assert rows[0] == "id,label,predicted,correct,output" and len(rows) == 3
    assert {row.split(",")[0] for row in rows[1:]} == {"test/IDRiD_001", "test/IDRiD_002"}


@pytest.mark.slow
def test_oct_classification_trains_and_evaluates_the_official_test_folder(tmp_path, tfds_dir):
    from configs import oct_classification
    from retina_jax import train
    config = dummy_config(oct_classification, "oct2017", tfds_dir)
    train.train_and_evaluate(config, str(tmp_path))
    config.eval.split = "test"
    results = train.evaluate(config, str(tmp_path))
    assert results["num_examples"] == 4
    assert sorted(results["per_class"]) == ["CNV", "DME", "DRUSEN", "NORMAL"]
    assert all(entry["support"] == 1 for entry in results["per_class"].values())
    assert (tmp_path / "eval" / "test" / "confusion.png").exists()
