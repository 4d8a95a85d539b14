"""Hand-computed cases for retina_jax.metrics."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retina_jax import metrics


def as_image(values) -> jnp.ndarray:
    """A (rows, cols) list as one (1, rows, cols, 1) image."""
    return jnp.asarray(values, jnp.float32)[None, ..., None]


# Jitted once per shape: far faster in tests than dispatching every op eagerly.
segmentation_counts = jax.jit(metrics.segmentation_counts, static_argnames="num_bins")


def confusion(counts) -> dict[str, int]:
    return {key: int(counts[key]) for key in metrics.CONFUSION_KEYS}


def metrics_of(probs, labels, mask=None, **kwargs) -> dict:
    counts = segmentation_counts(probs, labels, mask, **kwargs)
    return metrics.compute_segmentation_metrics(metrics.accumulate(None, counts))


# Dyadic probabilities so that p * num_bins is exact in float32.
# prediction (p >= 0.5):  [[1, 0, 1],      labels: [[1, 0, 0],
#                          [0, 0, 0]]               [1, 1, 0]]
# per pixel:              [[tp, tn, fp],
#                          [fn, fn, tn]]   -> tp=1, fp=1, fn=2, tn=2
PROBS = as_image([[0.875, 0.25, 0.75],
                  [0.375, 0.4375, 0.125]])
LABELS = as_image([[1, 0, 0],
                   [1, 1, 0]])


def test_hand_computed_counts_and_histograms():
    counts = segmentation_counts(PROBS, LABELS, num_bins=8)
    assert confusion(counts) == dict(tp=1, fp=1, fn=2, tn=2)
    # bins = floor(8p): positives 0.875->7, 0.375->3, 0.4375->3;
    #                   negatives 0.25->2, 0.75->6, 0.125->1
    np.testing.assert_array_equal(counts["pos_hist"], [0, 0, 0, 2, 0, 0, 0, 1])
    np.testing.assert_array_equal(counts["neg_hist"], [0, 1, 1, 0, 0, 0, 1, 0])
    assert counts["tp"].dtype == jnp.int32 and counts["pos_hist"].dtype == jnp.int32


def test_hand_computed_metrics():
    result = metrics_of(PROBS, LABELS)
    assert result == {
        "dice": 2 / 5,          # 2tp / (2tp + fp + fn) = 2 / (2 + 1 + 2)
        "iou": 1 / 4,           # tp / (tp + fp + fn)
        "precision": 1 / 2,     # tp / (tp + fp)
        "recall": 1 / 3,        # tp / (tp + fn)
        "specificity": 2 / 3,   # tn / (tn + fp)
        "accuracy": 3 / 6,      # (tp + tn) / 6
        # positives {.875, .375, .4375} vs negatives {.25, .75, .125}: .875 beats all 3,
        # .375 and .4375 beat 2 each -> 7 of 9 pairs
        "auc_roc": pytest.approx(7 / 9, abs=1e-12),
        "num_pixels": 6,
    }
    json.dumps(result)


def test_mask_excludes_pixels():
    # Ignore the fp at (0, 2) and the fn at (1, 1): tp=1, fp=0, fn=1, tn=2.
    mask = as_image([[1, 1, 0],
                     [1, 0, 1]])
    counts = segmentation_counts(PROBS, LABELS, mask, num_bins=8)
    assert confusion(counts) == dict(tp=1, fp=0, fn=1, tn=2)
    # The ignored 0.75 (negative) and 0.4375 (positive) leave the histograms.
    np.testing.assert_array_equal(counts["pos_hist"], [0, 0, 0, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(counts["neg_hist"], [0, 1, 1, 0, 0, 0, 0, 0])
    result = metrics.compute_segmentation_metrics(counts)
    assert result["dice"] == 2 / 3       # 2 / (2 + 0 + 1)
    assert result["precision"] == 1.0
    assert result["recall"] == 1 / 2
    assert result["accuracy"] == 3 / 4
    assert result["auc_roc"] == 1.0      # .875 and .375 both beat .25 and .125
    assert result["num_pixels"] == 4


def test_mask_of_zeros_counts_nothing():
    counts = segmentation_counts(PROBS, LABELS, jnp.zeros_like(LABELS), num_bins=8)
    assert confusion(counts) == dict(tp=0, fp=0, fn=0, tn=0)
    assert int(counts["pos_hist"].sum()) == 0 and int(counts["neg_hist"].sum()) == 0


def test_accumulation_is_exact_not_a_mean_of_batches():
    labels = as_image([[1, 0, 0, 0]])
    good = as_image([[0.9, 0.1, 0.1, 0.1]])   # tp=1, tn=3: dice 1
    bad = as_image([[0.9, 0.9, 0.9, 0.9]])    # tp=1, fp=3: dice 2 / 5
    total = None
    for probs in (good, bad):
        total = metrics.accumulate(total, segmentation_counts(probs, labels))

    whole = segmentation_counts(jnp.concatenate([good, bad]),
                                        jnp.concatenate([labels, labels]))
    assert total.keys() == whole.keys()
    for key in total:
        assert total[key].dtype == np.int64
        np.testing.assert_array_equal(total[key], whole[key])
    dice = metrics.compute_segmentation_metrics(total)["dice"]
    assert dice == 4 / 7                      # tp=2, fp=3, fn=0
    assert dice != pytest.approx((1 + 2 / 5) / 2)


# Four pixels each. Columns: probs, labels, expected metrics.
EMPTY_CASES = {
    "gt_and_prediction_empty": (
        [0.1, 0.2, 0.3, 0.4], [0, 0, 0, 0],
        dict(dice=1.0, iou=1.0, precision=1.0, recall=1.0, specificity=1.0, accuracy=1.0,
             auc_roc=None)),
    "gt_empty_prediction_not": (   # tp=0, fp=1, fn=0, tn=3; recall by the rule
        [0.9, 0.2, 0.3, 0.4], [0, 0, 0, 0],
        dict(dice=0.0, iou=0.0, precision=0.0, recall=0.0, specificity=3 / 4, accuracy=3 / 4,
             auc_roc=None)),
    "prediction_empty_gt_not": (   # tp=0, fp=0, fn=1, tn=3; precision by the rule
        [0.1, 0.2, 0.3, 0.4], [1, 0, 0, 0],
        dict(dice=0.0, iou=0.0, precision=0.0, recall=0.0, specificity=1.0, accuracy=3 / 4,
             auc_roc=0.0)),
    "gt_full_prediction_full": (   # tp=4; specificity by the rule
        [0.6, 0.7, 0.8, 0.9], [1, 1, 1, 1],
        dict(dice=1.0, iou=1.0, precision=1.0, recall=1.0, specificity=1.0, accuracy=1.0,
             auc_roc=None)),
    "gt_full_prediction_partial": (  # tp=3, fn=1; specificity by the rule
        [0.1, 0.7, 0.8, 0.9], [1, 1, 1, 1],
        dict(dice=6 / 7, iou=3 / 4, precision=1.0, recall=3 / 4, specificity=0.0,
             accuracy=3 / 4, auc_roc=None)),
}


@pytest.mark.parametrize("probs, labels, expected", EMPTY_CASES.values(), ids=EMPTY_CASES.keys())
def test_empty_rule(probs, labels, expected):
    result = metrics_of(as_image([probs]), as_image([labels]))
    assert result == {**expected, "num_pixels": 4}


def test_no_counted_pixel_scores_one():
    result = metrics_of(PROBS, LABELS, jnp.zeros_like(LABELS))
    assert result == dict(dice=1.0, iou=1.0, precision=1.0, recall=1.0, specificity=1.0,
                          accuracy=1.0, auc_roc=None, num_pixels=0)


def hist(scores, num_bins=10):
    bins = np.minimum((np.asarray(scores) * num_bins).astype(int), num_bins - 1)
    return np.bincount(bins, minlength=num_bins)


AUC_CASES = {
    "perfect": ([0.85, 0.95], [0.05, 0.15], 1.0),
    "reversed": ([0.05, 0.15], [0.85, 0.95], 0.0),
    "all_ties": ([0.51, 0.52, 0.53], [0.54, 0.55], 0.5),
    # 0.9 beats both, 0.4 beats 0.1 only: 3 of 4 pairs
    "hand": ([0.9, 0.4], [0.6, 0.1], 0.75),
    # 0.95 beats 0.45; 0.45 ties 0.45: (1 + 0.5) / 2
    "one_tie": ([0.95, 0.45], [0.45], 0.75),
}


@pytest.mark.parametrize("pos, neg, expected", AUC_CASES.values(), ids=AUC_CASES.keys())
def test_auc_hand_cases(pos, neg, expected):
    assert metrics.auc_from_histograms(hist(pos), hist(neg)) == expected


def test_auc_undefined_with_one_class():
    assert metrics.auc_from_histograms(hist([0.3, 0.7]), hist([])) is None
    assert metrics.auc_from_histograms(hist([]), hist([0.3])) is None


def brute_force_auc(pos, neg) -> float:
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(np.mean(pos > neg) + 0.5 * np.mean(pos == neg))


def test_auc_matches_brute_force_on_random_data():
    num_bins, num_pixels = 1000, 300
    rng = np.random.default_rng(0)
    # Centres of distinct bins, so the binned AUC must equal the pairwise one; positives
    # are likelier at high scores, so the AUC is far from 0.5.
    bins = rng.choice(num_bins, num_pixels, replace=False)
    scores = ((bins + 0.5) / num_bins).astype(np.float32)
    labels = (rng.random(num_pixels) < scores).astype(np.float32)
    counts = segmentation_counts(as_image([scores]), as_image([labels]),
                                         num_bins=num_bins)
    auc = metrics.compute_segmentation_metrics(counts)["auc_roc"]
    expected = brute_force_auc(scores[labels == 1], scores[labels == 0])
    assert 0.7 < expected < 1.0
    assert auc == pytest.approx(expected, abs=1e-12)


def test_counts_under_jit_match_eager():
    mask = as_image([[1, 1, 0],
                     [1, 0, 1]])
    for m in (None, mask):
        jitted = segmentation_counts(PROBS, LABELS, m, num_bins=8)
        eager = metrics.segmentation_counts(PROBS, LABELS, m, num_bins=8)
        for key in eager:
            np.testing.assert_array_equal(jitted[key], eager[key])


def test_threshold_boundary_counts_as_positive():
    # probs >= threshold is a positive prediction: 0.5 is in, the float below it is out.
    below = float(np.nextafter(np.float32(0.5), np.float32(0)))
    counts = segmentation_counts(as_image([[0.5, below]]), as_image([[1, 0]]),
                                         threshold=0.5)
    assert confusion(counts) == dict(tp=1, fp=0, fn=0, tn=1)


def test_probability_one_lands_in_last_bin():
    counts = segmentation_counts(as_image([[1.0, 0.0]]), as_image([[1, 0]]), num_bins=4)
    np.testing.assert_array_equal(counts["pos_hist"], [0, 0, 0, 1])
    np.testing.assert_array_equal(counts["neg_hist"], [1, 0, 0, 0])
