"""Binary segmentation: logits (B,H,W,1) against `mask` (B,H,W,1) in {0,1}.

Pixels count towards losses and metrics only for labelled, non-padding examples, and only
inside the field of view when the batch has one (`fov`, fundus photographs: the DRIVE
protocol). Evaluation reports the split as one image (`dice`, `iou`, ... from summed confusion
counts, as the literature's dataset-level Dice) and per case (`per_case.csv`, with each
case's own AUC-ROC and AUC-PR; `dice_per_case_mean`, `auc_roc_per_case_mean`); with the vessel
literature's names too (`f1` = `dice`, `sensitivity` = `recall`), `auc_roc`, `auc_pr`, and the
F1-maximising threshold. A batch with a second observer's annotation (`mask2`, `has_mask2`)
also scores it against the first (`human`).
"""
import functools
import heapq

import jax
import jax.numpy as jnp
import numpy as np

from retina_jax import io_utils, metrics

CASE_COLUMNS = ("gt_pixels", "predicted_pixels", "tp", "fp", "fn", "tn",
                "dice", "iou", "precision", "recall", "auc_roc", "auc_pr")


def pixel_weights(batch: dict) -> jnp.ndarray:
    """(B,H,W,1) weights: 1 where a pixel counts, 0 for unlabelled or padding examples and, when
    the batch has a field-of-view mask `fov`, outside it."""
    example_weight = batch["labelled"] * batch.get("valid", 1.0)
    weights = jnp.broadcast_to(example_weight[:, None, None, None], batch["mask"].shape)
    return weights * (batch["fov"] > 0.5) if "fov" in batch else weights


def loss(loss_fn, logits: jnp.ndarray, batch: dict) -> jnp.ndarray:
    return loss_fn(logits, batch["mask"], pixel_weights(batch))


def eval_counts(cases: dict, batch: dict) -> dict:
    """Per-batch sums that `metrics.accumulate` adds up exactly over a split: the `case_counts`
    of the batch's labelled, non-padding examples summed (so the split's pixels are those
    `pixel_weights` counts), `num_examples` and `num_labelled`.

    With a second observer in the batch, also `human_tp` ... `human_tn`: the second observer's
    mask scored as a prediction against the first's, by the same counting and the same pixels
    (examples without one left out), and `num_human` (examples with one).
    """
    valid = batch.get("valid", jnp.ones_like(batch["labelled"]))
    counted = (valid * batch["labelled"] > 0.5).astype(jnp.int32)
    counts = {key: jnp.tensordot(counted, values, axes=1) for key, values in cases.items()}
    counts["num_examples"] = jnp.sum(valid).astype(jnp.int32)
    counts["num_labelled"] = jnp.sum(counted)
    if "mask2" in batch:
        has_second = jnp.asarray(batch["has_mask2"], jnp.float32)
        second = metrics.segmentation_counts(
            jnp.asarray(batch["mask2"] > 0, jnp.float32), batch["mask"],
            pixel_weights(batch) * has_second[:, None, None, None], threshold=0.5, num_bins=2)
        counts.update({f"human_{key}": second[key] for key in metrics.CONFUSION_KEYS})
        counts["num_human"] = jnp.sum(valid * batch["labelled"] * has_second).astype(jnp.int32)
    return counts


def case_counts(probabilities: jnp.ndarray, batch: dict, *, threshold: float, num_bins: int) -> dict:
    """Each example's `metrics.segmentation_counts` (whatever `labelled` says): (B,) int32
    confusion counts and (B, num_bins) probability histograms, of every pixel or of those inside
    the field of view when the batch has `fov`."""
    count = functools.partial(metrics.segmentation_counts, threshold=threshold, num_bins=num_bins)
    if "fov" in batch:
        return jax.vmap(count)(probabilities, batch["mask"], batch["fov"])
    return jax.vmap(count)(probabilities, batch["mask"])


def case_rows(counts: dict, info: dict) -> list[dict]:
    """One row per real (non-padding) example: its `info` (id, ...) and, when labelled, metrics.

    `counts` holds the (B,) counts and (B, num_bins) histograms of `case_counts`; `info` (B,)
    arrays of `valid`, `labelled` and the identifying features (`id` as bytes). Unlabelled rows
    carry only `predicted_pixels`. `auc_roc` and `auc_pr` are the example's own, at the
    histograms' resolution (None where it has no positive or no negative pixel).
    """
    rows = []
    for index in np.flatnonzero(info["valid"] > 0):
        row = {key: io_utils.plain_value(values[index]) for key, values in info.items()
               if key not in ("valid", "labelled")}
        tp, fp, fn, tn = (int(counts[key][index]) for key in metrics.CONFUSION_KEYS)
        row["labelled"] = bool(info["labelled"][index] > 0)
        row["predicted_pixels"] = tp + fp
        if row["labelled"]:
            ratios = metrics.overlap_ratios(tp, fp, fn, tn)
            pos_hist, neg_hist = counts["pos_hist"][index], counts["neg_hist"][index]
            row.update(gt_pixels=tp + fn, tp=tp, fp=fp, fn=fn, tn=tn,
                       **{key: ratios[key] for key in ("dice", "iou", "precision", "recall")},
                       auc_roc=metrics.auc_from_histograms(pos_hist, neg_hist),
                       auc_pr=metrics.average_precision_from_histograms(pos_hist, neg_hist))
        rows.append(row)
    return rows


def summarize(counts: dict, cases: list[dict]) -> dict:
    """Split-level metrics (snake_case) from accumulated counts and the per-case rows.

    Besides `metrics.compute_segmentation_metrics` (at the evaluation threshold): `f1` (= dice)
    and `sensitivity` (= recall), `auc_pr`, `best_threshold` / `best_f1` (the F1-maximising bin
    threshold of this split, and its F1), `dice_per_case_mean` / `iou_per_case_mean` (mean over
    labelled cases, empty ones by the empty rule), `dice_per_case_mean_positive` (over cases
    whose ground truth has foreground; None when none has) and `auc_roc_per_case_mean` (over
    cases whose AUC-ROC is defined, as vessel papers that average images report it; None when
    none is); with second-observer counts, `human` (see `human_reference`). A split without
    ground truth has no metrics: only `num_examples` and `labelled: False`.
    """
    summary = {"num_examples": int(counts["num_examples"])}
    if int(counts["num_labelled"]) == 0:
        return {**summary, "labelled": False}
    labelled = [case for case in cases if case["labelled"]]
    positive = [case["dice"] for case in labelled if case["gt_pixels"] > 0]
    case_aucs = [case["auc_roc"] for case in labelled if case["auc_roc"] is not None]
    overall = metrics.compute_segmentation_metrics(counts)
    best_threshold, best_f1 = metrics.best_f1_threshold(counts["pos_hist"], counts["neg_hist"])
    human = human_reference(counts)
    return {
        **overall,
        "f1": overall["dice"],
        "sensitivity": overall["recall"],
        "auc_pr": metrics.average_precision_from_histograms(counts["pos_hist"], counts["neg_hist"]),
        "best_threshold": best_threshold,
        "best_f1": best_f1,
        "dice_per_case_mean": float(np.mean([case["dice"] for case in labelled])),
        "iou_per_case_mean": float(np.mean([case["iou"] for case in labelled])),
        "dice_per_case_mean_positive": float(np.mean(positive)) if positive else None,
        "auc_roc_per_case_mean": float(np.mean(case_aucs)) if case_aucs else None,
        **({"human": human} if human else {}),
        **summary,
    }


def vessel_ratios(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """`f1`, `sensitivity`, `specificity`, `accuracy`, `precision`, `iou` of confusion counts."""
    ratios = metrics.overlap_ratios(tp, fp, fn, tn)
    return {"f1": ratios["dice"], "sensitivity": ratios["recall"], "specificity": ratios["specificity"],
            "accuracy": ratios["accuracy"], "precision": ratios["precision"], "iou": ratios["iou"]}


def at_threshold(counts: dict, threshold: float) -> dict:
    """The split's metrics at `threshold` (a multiple of 1 / num_bins, e.g. the one chosen on
    validation), from the accumulated histograms: `threshold` and the `vessel_ratios`."""
    pos_hist, neg_hist = counts["pos_hist"], counts["neg_hist"]
    confusion = metrics.confusion_at_bin(pos_hist, neg_hist,
                                         metrics.bin_of_threshold(threshold, len(pos_hist)))
    return {"threshold": threshold, **vessel_ratios(**confusion)}


def human_reference(counts: dict) -> dict | None:
    """The second observer scored against the first over the examples that have one (`num_cases`
    of them, the same pixels), or None when no example has one."""
    if int(counts.get("num_human", 0)) == 0:
        return None
    confusion = {key: int(counts[f"human_{key}"]) for key in metrics.CONFUSION_KEYS}
    return {**vessel_ratios(**confusion), "num_cases": int(counts["num_human"])}


class Gallery:
    """The `size // 2` worst and `size - size // 2` best cases of a split, kept as they stream by.

    Worst = lowest Dice (then most wrong pixels); best = highest Dice among cases whose ground
    truth has foreground (an empty mask predicted empty is trivially perfect and shows nothing).
    Memory stays bounded by `size` examples. Unlabelled cases are shown first-come.
    """

    def __init__(self, size: int):
        self.num_worst, self.num_best = size // 2, size - size // 2
        self.size = size
        self._worst, self._best, self._unlabelled = [], [], []
        self._order = 0

    def add(self, row: dict, image: np.ndarray, mask: np.ndarray, probability: np.ndarray) -> None:
        case = (row, image, mask, probability)
        self._order += 1
        if not row["labelled"]:
            if len(self._unlabelled) < self.size:
                self._unlabelled.append(case)
            return
        # heapq keeps the smallest key on top, so each heap holds the negated "badness" to evict.
        _push_bounded(self._worst, (-row["dice"], row["fp"] + row["fn"], -self._order), case,
                      self.num_worst)
        if row["gt_pixels"] > 0:
            _push_bounded(self._best, (row["dice"], -self._order), case, self.num_best)

    def cases(self) -> list[tuple[str, tuple]]:
        """(caption, (row, image, mask, probability)) for the worst cases, then the best ones."""
        worst = [case for _, case in sorted(self._worst, key=lambda item: item[0], reverse=True)]
        worst_ids = {id(case[0]) for case in worst}
        best = [case for _, case in sorted(self._best, key=lambda item: item[0], reverse=True)
                if id(case[0]) not in worst_ids]
        shown = [(f"worst {rank + 1}", case) for rank, case in enumerate(worst)]
        shown += [(f"best {rank + 1}", case) for rank, case in enumerate(best)]
        shown += [("unlabelled", case) for case in self._unlabelled]
        return [(f"{label}: {_describe(case[0])}", case) for label, case in shown]


def _push_bounded(heap: list, key: tuple, case: tuple, limit: int) -> None:
    """Keeps the `limit` largest keys; keys end in a unique counter, so cases are never compared."""
    if limit <= 0:
        return
    if len(heap) < limit:
        heapq.heappush(heap, (key, case))
    elif key > heap[0][0]:
        heapq.heapreplace(heap, (key, case))


def _describe(row: dict) -> str:
    name = row.get("id", "")
    if not row["labelled"]:
        return f"{name} predicted {row['predicted_pixels']} px"
    return f"{name} dice {row['dice']:.3f} (GT {row['gt_pixels']} px, predicted {row['predicted_pixels']} px)"
