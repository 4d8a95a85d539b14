"""Vessel-protocol metrics: AUC-PR, thresholds and curves from the histograms (hand-computed and
against brute-force rank computations), FOV-only counting and the second observer's score."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retina_jax import metrics
from retina_jax.tasks import segmentation

counts_of = jax.jit(metrics.segmentation_counts, static_argnames="num_bins")

# positives {.875, .375, .4375}, negatives {.25, .75, .125} (dyadic: exact bins)
PROBS = jnp.array([[0.875, 0.25, 0.75], [0.375, 0.4375, 0.125]])[None, ..., None]
LABELS = jnp.array([[1, 0, 0], [1, 1, 0]], jnp.float32)[None, ..., None]


def histograms(num_bins):
    counts = counts_of(PROBS, LABELS, num_bins=num_bins)
    return np.asarray(counts["pos_hist"]), np.asarray(counts["neg_hist"])


def test_average_precision_hand_computed():
    # 16 bins separate every score. Descending: .875 P (recall 1/3, precision 1), .75 N,
    # .4375 P (2/3, 2/3), .375 P (1, 3/4): AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/4 = 29/36.
    assert metrics.average_precision_from_histograms(*histograms(16)) == pytest.approx(29 / 36)
    # 8 bins put .375 and .4375 in one bin (3): they enter together, at precision 3/4:
    # AP = 1/3 * 1 + 2/3 * 3/4 = 5/6.
    assert metrics.average_precision_from_histograms(*histograms(8)) == pytest.approx(5 / 6)
    assert metrics.average_precision_from_histograms(np.zeros(4), np.ones(4)) is None


def brute_force_auc_roc(scores, labels) -> float:
    """P(positive scores higher) + half P(tie), over every positive-negative pair."""
    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = sum(float(p > n) + 0.5 * float(p == n) for p, n in itertools.product(positives, negatives))
    return wins / (len(positives) * len(negatives))


def brute_force_average_precision(scores, labels) -> float:
    """sum over distinct scores, high to low, of (recall gained) x (precision there)."""
    total, previous_recall = 0.0, 0.0
    for threshold in sorted(set(scores), reverse=True):
        predicted = scores >= threshold
        tp = np.sum(predicted & (labels == 1))
        recall, precision = tp / labels.sum(), tp / predicted.sum()
        total += (recall - previous_recall) * precision
        previous_recall = recall
    return total


@pytest.mark.parametrize("seed", range(3))
def test_histogram_aucs_equal_brute_force_rank_computations(seed):
    rng = np.random.default_rng(seed)
    num_bins = 32
    # Scores at bin centres, with many ties: the histogram is then exact, ties included.
    bins = rng.integers(0, num_bins, 300)
    labels = (rng.random(300) < 0.15 + 0.6 * bins / num_bins).astype(np.int32)
    scores = (bins + 0.5) / num_bins
    counts = counts_of(jnp.asarray(scores, jnp.float32).reshape(1, 15, 20, 1),
                       jnp.asarray(labels, jnp.float32).reshape(1, 15, 20, 1), num_bins=num_bins)
    assert metrics.auc_from_histograms(counts["pos_hist"], counts["neg_hist"]) == pytest.approx(
        brute_force_auc_roc(scores, labels), abs=1e-12)
    assert metrics.average_precision_from_histograms(counts["pos_hist"], counts["neg_hist"]) == pytest.approx(
        brute_force_average_precision(scores, labels), abs=1e-12)


def test_best_f1_threshold_and_confusion_at_any_bin():
    pos_hist, neg_hist = histograms(8)  # positives in bins 7, 3, 3; negatives in 6, 2, 1
    # threshold k/8 -> F1: k=7: 2/4; k=4..6: 2/5; k=3: 6/7 (tp 3, fp 1); k=2: 6/8; k<=1: 6/9.
    assert metrics.best_f1_threshold(pos_hist, neg_hist) == (3 / 8, pytest.approx(6 / 7))
    # At 0.5 (bin 4) the histograms give the direct counts at threshold 0.5.
    assert metrics.confusion_at_bin(pos_hist, neg_hist, 4) == dict(tp=1, fp=1, fn=2, tn=2)
    assert metrics.confusion_at_bin(pos_hist, neg_hist, 0) == dict(tp=3, fp=3, fn=0, tn=0)
    assert metrics.confusion_at_bin(pos_hist, neg_hist, 8) == dict(tp=0, fp=0, fn=3, tn=3)
    assert metrics.best_f1_threshold(np.zeros(8), neg_hist) == (None, None)


def test_best_f1_ties_go_to_the_highest_threshold():
    # One positive in bin 3, nothing else below bin 3 or above: thresholds 1/4 .. 3/4 all give F1 1.
    assert metrics.best_f1_threshold([0, 0, 0, 1], [1, 0, 0, 0]) == (0.75, 1.0)


def test_thresholds_must_lie_on_the_bin_grid():
    assert metrics.bin_of_threshold(0.5, 4096) == 2048
    assert metrics.bin_of_threshold(0.52978515625, 4096) == 2170
    with pytest.raises(ValueError, match="not a multiple of 1/8"):
        metrics.bin_of_threshold(0.3, 8)


def test_curves_run_from_nothing_to_everything_predicted():
    points = metrics.curves(*histograms(8))
    assert (points["fpr"][0], points["tpr"][0]) == (0.0, 0.0)
    assert (points["fpr"][-1], points["tpr"][-1]) == (1.0, 1.0)
    # Threshold 7/8 (second point): the .875 positive alone -> tpr 1/3, fpr 0, precision 1.
    assert (points["fpr"][1], points["tpr"][1], points["precision"][1]) == (0.0, pytest.approx(1 / 3), 1.0)
    assert points["precision"][-1] == 0.5 and np.all(np.diff(points["tpr"]) >= 0)


# Two 2x3 images. Image 0: first observer M1, second M2, FOV F (the pixel at (1, 2) is outside).
# Image 1 has no second observer.
M1 = [[1, 0, 0], [1, 1, 0]]
M2 = [[1, 1, 0], [0, 1, 0]]
FOV = [[1, 1, 1], [1, 1, 0]]


def vessel_batch():
    as_batch = lambda rows: jnp.asarray(rows, jnp.float32)[..., None]  # noqa: E731
    return {"mask": as_batch([M1, M1]), "mask2": as_batch([M2, M1]), "fov": as_batch([FOV, FOV]),
            "has_mask2": jnp.array([True, False]), "labelled": jnp.ones(2), "valid": jnp.ones(2)}


def test_fov_limits_loss_weights_and_case_counts():
    batch = vessel_batch()
    np.testing.assert_array_equal(segmentation.pixel_weights(batch)[0, ..., 0], FOV)
    # A prediction of all ones: inside the FOV 3 vessel (tp) and 2 background (fp) pixels; the
    # pixel outside (background) is not counted.
    counts = segmentation.case_counts(jnp.ones((2, 2, 3, 1)), batch, threshold=0.5, num_bins=2)
    assert {key: value.tolist() for key, value in counts.items()} == {
        "tp": [3, 3], "fp": [2, 2], "fn": [0, 0], "tn": [0, 0],
        "pos_hist": [[0, 3], [0, 3]], "neg_hist": [[0, 2], [0, 2]]}


def test_second_observer_is_scored_by_the_same_counts_inside_the_fov():
    batch = vessel_batch()
    cases = segmentation.case_counts(jnp.full((2, 2, 3, 1), 0.75), batch, threshold=0.5, num_bins=4)
    counts = segmentation.eval_counts(cases, batch)
    # Image 0 inside the FOV: M2 vs M1 -> tp (0,0), (1,1); fp (0,1); fn (1,0); tn (0,2).
    assert {key: int(counts[f"human_{key}"]) for key in metrics.CONFUSION_KEYS} == dict(tp=2, fp=1, fn=1, tn=1)
    assert int(counts["num_human"]) == 1
    total = metrics.accumulate(None, counts)
    rows = segmentation.case_rows(cases, {"valid": np.ones(2), "labelled": np.ones(2), "id": np.array([b"a", b"b"])})
    summary = segmentation.summarize(total, rows)
    assert summary["human"] == {"f1": 2 / 3, "sensitivity": 2 / 3, "specificity": 1 / 2, "accuracy": 3 / 5,
                                "precision": 2 / 3, "iou": 1 / 2, "num_cases": 1}
    # The model predicts every counted pixel (10: 6 vessel, 4 background) as vessel.
    assert (summary["f1"], summary["sensitivity"], summary["specificity"]) == (12 / 16, 1.0, 0.0)
    assert summary["f1"] == summary["dice"] and summary["num_pixels"] == 10
    assert summary["auc_pr"] == pytest.approx(6 / 10)   # one bin: precision 6/10 at recall 1
    assert summary["best_threshold"] == 0.75 and summary["best_f1"] == pytest.approx(12 / 16)


def test_metrics_at_a_chosen_threshold_come_from_the_histograms():
    counts = metrics.accumulate(None, counts_of(PROBS, LABELS, num_bins=8))
    at = segmentation.at_threshold(counts, 3 / 8)  # tp 3, fp 1, fn 0, tn 2
    assert at == {"threshold": 0.375, "f1": 6 / 7, "sensitivity": 1.0, "specificity": 2 / 3,
                  "accuracy": 5 / 6, "precision": 3 / 4, "iou": 3 / 4}
