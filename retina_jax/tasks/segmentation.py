"""Binary segmentation: logits (B,H,W,1) against `mask` (B,H,W,1) in {0,1}.

Pixels count towards losses and metrics only for labelled, non-padding examples. Evaluation
reports the split as one image (`dice`, `iou`, ... from summed confusion counts, as the
literature's dataset-level Dice) and per case (`per_case.csv`, `dice_per_case_mean`).
"""
import heapq

import jax
import jax.numpy as jnp
import numpy as np

from retina_jax import metrics

CASE_COLUMNS = ("gt_pixels", "predicted_pixels", "tp", "fp", "fn", "tn",
                "dice", "iou", "precision", "recall")


def pixel_weights(batch: dict) -> jnp.ndarray:
    """(B,H,W,1) weights: 1 where a pixel counts, 0 for unlabelled or padding examples."""
    example_weight = batch["labelled"] * batch.get("valid", 1.0)
    return jnp.broadcast_to(example_weight[:, None, None, None], batch["mask"].shape)


def loss(loss_fn, logits: jnp.ndarray, batch: dict) -> jnp.ndarray:
    return loss_fn(logits, batch["mask"], pixel_weights(batch))


def eval_counts(logits: jnp.ndarray, batch: dict, *, threshold: float, num_bins: int) -> dict:
    """Per-batch sums that `metrics.accumulate` adds up exactly over a split."""
    counts = metrics.segmentation_counts(jax.nn.sigmoid(logits), batch["mask"], pixel_weights(batch),
                                         threshold=threshold, num_bins=num_bins)
    valid = batch.get("valid", jnp.ones_like(batch["labelled"]))
    counts["num_examples"] = jnp.sum(valid).astype(jnp.int32)
    counts["num_labelled"] = jnp.sum(valid * batch["labelled"]).astype(jnp.int32)
    return counts


def case_counts(probabilities: jnp.ndarray, batch: dict, *, threshold: float) -> dict:
    """(B,) int32 confusion counts of each example (all pixels, whatever `labelled` says)."""
    predicted = probabilities[..., 0] >= threshold
    positive = batch["mask"][..., 0] > 0.5

    def count(condition):
        return jnp.sum(condition, axis=(1, 2), dtype=jnp.int32)

    return {"tp": count(predicted & positive), "fp": count(predicted & ~positive),
            "fn": count(~predicted & positive), "tn": count(~predicted & ~positive)}


def case_rows(counts: dict, info: dict) -> list[dict]:
    """One row per real (non-padding) example: its `info` (id, ...) and, when labelled, metrics.

    `counts` holds (B,) arrays from `case_counts`; `info` (B,) arrays of `valid`, `labelled` and
    the identifying features (`id` as bytes). Unlabelled rows carry only `predicted_pixels`.
    """
    rows = []
    for index in np.flatnonzero(info["valid"] > 0):
        row = {key: _plain(values[index]) for key, values in info.items()
               if key not in ("valid", "labelled")}
        tp, fp, fn, tn = (int(counts[key][index]) for key in metrics.CONFUSION_KEYS)
        row["labelled"] = bool(info["labelled"][index] > 0)
        row["predicted_pixels"] = tp + fp
        if row["labelled"]:
            ratios = metrics.overlap_ratios(tp, fp, fn, tn)
            row.update(gt_pixels=tp + fn, tp=tp, fp=fp, fn=fn, tn=tn,
                       **{key: ratios[key] for key in ("dice", "iou", "precision", "recall")})
        rows.append(row)
    return rows


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


def summarize(counts: dict, cases: list[dict]) -> dict:
    """Split-level metrics (snake_case) from accumulated counts and the per-case rows.

    Adds `dice_per_case_mean` / `iou_per_case_mean` (mean over labelled cases, empty ones by the
    empty rule) and `dice_per_case_mean_positive` (over cases whose ground truth has foreground;
    None when none has). A split without ground truth has no metrics: only `num_examples` and
    `labelled: False`.
    """
    summary = {"num_examples": int(counts["num_examples"])}
    if int(counts["num_labelled"]) == 0:
        return {**summary, "labelled": False}
    labelled = [case for case in cases if case["labelled"]]
    positive = [case["dice"] for case in labelled if case["gt_pixels"] > 0]
    return {
        **metrics.compute_segmentation_metrics(counts),
        "dice_per_case_mean": float(np.mean([case["dice"] for case in labelled])),
        "iou_per_case_mean": float(np.mean([case["iou"] for case in labelled])),
        "dice_per_case_mean_positive": float(np.mean(positive)) if positive else None,
        **summary,
    }


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
