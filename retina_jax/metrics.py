"""Binary segmentation metrics, accumulated exactly over a whole split.

Each batch is reduced on device to integer sums (`segmentation_counts`): the confusion
counts at one threshold and histograms of the probabilities of the positive and the
negative pixels. The host adds them up in int64 (`accumulate`), and the metrics are
computed once from the totals (`compute_segmentation_metrics`), so they are the metrics
of the split as one image, never a mean of per-batch ratios. Under `jax.jit` over a
sharded batch the device sums already cover every device.

The empty rule: a ratio whose denominator is zero is 1.0 when the prediction agrees
with the ground truth on every counted pixel (fp + fn == 0), else 0.0. Case by case:

  ratio         denominator zero when               value then
  dice, iou     tp = fp = fn = 0 (GT and pred empty) 1.0 (they agree)
  precision     tp = fp = 0 (nothing predicted)      1.0 if the GT is empty too, else 0.0
  recall        tp = fn = 0 (GT empty)               1.0 if nothing is predicted, else 0.0
  specificity   tn = fp = 0 (GT all positive)        1.0 if all is predicted, else 0.0
  accuracy      no counted pixel                     1.0

So an empty GT with some predicted positives scores dice = iou = precision = 0.0 by the
formulas and recall = 0.0 by the rule; with no counted pixel at all every ratio is 1.0.
`auc_roc` is None whenever the counted pixels hold only one class (or none), `auc_pr` whenever
they hold no positive pixel.

The histograms also give the metrics at any other threshold on the bin grid (k / num_bins:
a pixel is predicted positive where its bin is >= k), the ROC and precision-recall curves and
the F1-maximising threshold, all exactly, with no second pass over the data.
"""
import jax
import jax.numpy as jnp
import numpy as np

CONFUSION_KEYS = ("tp", "fp", "fn", "tn")


def confusion_counts(predicted, positive, counted) -> dict[str, jax.Array]:
    """int32 `tp`, `fp`, `fn`, `tn` of boolean maps, summed over every pixel where `counted` is
    True (a boolean map)."""
    def count(condition):
        return jnp.sum(condition & counted, dtype=jnp.int32)

    return {"tp": count(predicted & positive), "fp": count(predicted & ~positive),
            "fn": count(~predicted & positive), "tn": count(~predicted & ~positive)}


def segmentation_counts(probs, labels, mask=None, *, threshold=0.5,
                        num_bins: int = 1000) -> dict[str, jax.Array]:
    """Confusion counts and probability histograms of one batch.

    Args:
      probs: (B, H, W, 1) float probabilities (after the sigmoid).
      labels: (B, H, W, 1) in {0, 1}; a pixel is positive where label > 0.5.
      mask: (B, H, W, 1) in {0, 1}, or None to count every pixel; a pixel counts where
        mask > 0.5.
      threshold: a pixel is predicted positive where `probs >= threshold`.
      num_bins: histogram resolution; static under `jax.jit`.

    Returns:
      int32 scalars `tp`, `fp`, `fn`, `tn` over the counted pixels, and int32 (num_bins,)
      vectors `pos_hist`, `neg_hist`: counted positive / negative pixels per probability
      bin, bin = floor(p * num_bins) clipped to [0, num_bins - 1].
    """
    probs = jnp.asarray(probs, jnp.float32)
    positive = jnp.asarray(labels) > 0.5
    counted = (jnp.ones(probs.shape, bool) if mask is None else jnp.asarray(mask) > 0.5)
    predicted = probs >= threshold
    bins = jnp.clip(jnp.floor(probs * num_bins), 0, num_bins - 1).astype(jnp.int32)
    # One scatter fills both histograms: negatives are offset by num_bins, and uncounted
    # pixels go to a last bin that is dropped.
    index = jnp.where(counted, bins + jnp.where(positive, 0, num_bins), 2 * num_bins)
    hist = jnp.bincount(index.ravel(), length=2 * num_bins + 1).astype(jnp.int32)
    return {
        **confusion_counts(predicted, positive, counted),
        "pos_hist": hist[:num_bins],
        "neg_hist": hist[num_bins:2 * num_bins],
    }


def accumulate(total: dict[str, np.ndarray] | None, batch_counts: dict) -> dict[str, np.ndarray]:
    """`total + batch_counts` key by key, as host-side int64 numpy; `total` None starts a sum."""
    batch = {key: np.asarray(value, np.int64) for key, value in batch_counts.items()}
    if total is None:
        return batch
    return {key: total[key] + batch[key] for key in total}


def auc_from_histograms(pos_hist, neg_hist) -> float | None:
    """ROC AUC = P(score_pos > score_neg) + 0.5 P(tie), at the histograms' bin resolution.

    Args:
      pos_hist, neg_hist: (num_bins,) counts of positive / negative pixels per bin;
        pairs in the same bin count as ties.

    Returns:
      The AUC as a float, or None when either class has no pixel (undefined).
    """
    pos = np.asarray(pos_hist, np.float64)
    neg = np.asarray(neg_hist, np.float64)
    num_pos, num_neg = pos.sum(), neg.sum()
    if num_pos == 0 or num_neg == 0:
        return None
    neg_in_lower_bins = np.cumsum(neg) - neg
    wins = np.dot(pos, neg_in_lower_bins + 0.5 * neg)
    return float(wins / (num_pos * num_neg))


def overlap_ratios(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """`dice`, `iou`, `precision`, `recall`, `specificity`, `accuracy` of confusion counts, with
    zero denominators by the empty rule of the module docstring (for a split or for one case)."""
    agrees = fp + fn == 0

    def ratio(numerator: int, denominator: int) -> float:
        return numerator / denominator if denominator else float(agrees)

    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "accuracy": ratio(tp + tn, tp + fp + fn + tn),
    }


def compute_segmentation_metrics(counts: dict) -> dict[str, float | int | None]:
    """Metrics of accumulated `counts` (see `segmentation_counts`), as JSON-ready Python scalars.

    Returns the `overlap_ratios` (floats), `auc_roc` (float or None) and `num_pixels` (int, the
    counted pixels).
    """
    tp, fp, fn, tn = (int(counts[key]) for key in CONFUSION_KEYS)
    return {
        **overlap_ratios(tp, fp, fn, tn),
        "auc_roc": auc_from_histograms(counts["pos_hist"], counts["neg_hist"]),
        "num_pixels": tp + fp + fn + tn,
    }


def cumulative_counts(pos_hist, neg_hist) -> tuple[np.ndarray, np.ndarray]:
    """(tp, fp), each (num_bins + 1,): tp[k] / fp[k] = positive / negative pixels whose bin is
    >= k, i.e. predicted positive at threshold k / num_bins (tp[num_bins] = fp[num_bins] = 0)."""
    def at_or_above(hist):
        hist = np.asarray(hist, np.int64)
        return np.concatenate([np.cumsum(hist[::-1])[::-1], [0]])
    return at_or_above(pos_hist), at_or_above(neg_hist)


def confusion_at_bin(pos_hist, neg_hist, bin_threshold: int) -> dict[str, int]:
    """`tp`, `fp`, `fn`, `tn` when pixels of bin >= `bin_threshold` are predicted positive."""
    tp, fp = cumulative_counts(pos_hist, neg_hist)
    num_pos, num_neg = int(tp[0]), int(fp[0])
    hits, false_alarms = int(tp[bin_threshold]), int(fp[bin_threshold])
    return {"tp": hits, "fp": false_alarms, "fn": num_pos - hits, "tn": num_neg - false_alarms}


def average_precision_from_histograms(pos_hist, neg_hist) -> float | None:
    """Area under the precision-recall curve as average precision, sum_k (R_k - R_k+1) P_k over
    the bin thresholds from the highest down (sklearn's `average_precision_score` of the bin
    indices: pixels of one bin enter together). None when there is no positive pixel."""
    tp, fp = cumulative_counts(pos_hist, neg_hist)
    if tp[0] == 0:
        return None
    recall = tp / tp[0]
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.ones(len(tp)), where=predicted > 0)
    return float(np.sum((recall[:-1] - recall[1:]) * precision[:-1]))


def best_f1_threshold(pos_hist, neg_hist) -> tuple[float | None, float | None]:
    """(threshold k / num_bins, its F1) of the bin threshold with the highest F1 (the highest
    such threshold on ties); (None, None) when there is no positive pixel."""
    tp, fp = cumulative_counts(pos_hist, neg_hist)
    if tp[0] == 0:
        return None, None
    f1 = 2 * tp / (2 * tp + fp + (tp[0] - tp))
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))
    return best / (len(f1) - 1), float(f1[best])


def bin_of_threshold(threshold: float, num_bins: int) -> int:
    """The bin threshold k with k / num_bins = `threshold`, which must lie on that grid (0.5
    does for an even num_bins; chosen thresholds always do)."""
    bin_threshold = round(threshold * num_bins)
    if not np.isclose(bin_threshold, threshold * num_bins, atol=1e-6) or not 0 <= bin_threshold <= num_bins:
        raise ValueError(f"Threshold {threshold} is not a multiple of 1/{num_bins} in [0, 1]; with "
                         f"{num_bins} histogram bins use one that is.")
    return bin_threshold


def curves(pos_hist, neg_hist) -> dict[str, np.ndarray]:
    """ROC (`fpr`, `tpr`) and precision-recall (`recall`, `precision`) points at every bin
    threshold, from the highest (nothing predicted) to 0 (everything predicted)."""
    tp, fp = cumulative_counts(pos_hist, neg_hist)
    tp, fp = tp[::-1].astype(np.float64), fp[::-1].astype(np.float64)
    predicted = tp + fp
    return {"fpr": fp / max(fp[-1], 1.0), "tpr": tp / max(tp[-1], 1.0),
            "recall": tp / max(tp[-1], 1.0),
            "precision": np.divide(tp, predicted, out=np.ones(len(tp)), where=predicted > 0)}
