"""Image classification (OCT disease, DR grade, fluid present): outputs (B, K) against `label` (B,).

Two heads (`config.classification.head`):
  softmax     K = num_classes logits; loss = class-weighted softmax cross-entropy with label
              smoothing; predicted class = argmax; scores = softmax probabilities.
  regression  one output, the grade as a real number (ordinal grading, as the Kaggle DR
              solutions did); loss = class-weighted squared error to the grade; predicted grade
              = how many of the K - 1 ascending `thresholds` the output reaches (default
              k - 0.5; `tune_thresholds` picks them on validation to maximise QWK).

Class weights (`config.classification.class_weights`): "none", "balanced" (n / (K n_k) from the
train split's counts, so every class carries the same total weight), or K comma-separated numbers. The loss is
the weighted mean: sum(w_i loss_i) / sum(w_i).

Evaluation keeps every example's scores on the host (splits hold thousands of images, not
millions of pixels) and computes the metrics once over the split, exactly (`summarize`):

  accuracy           share of examples predicted right
  balanced_accuracy  mean per-class recall
  macro_f1           mean per-class F1
  auc_ovr            mean one-vs-rest AUC-ROC (exact, from ranks; ties count one half); the
                     regression head scores class k by -|output - k|
  qwk                quadratic weighted kappa (Cohen 1968) of the predicted against the true class
  per_class          {name: precision, recall, f1, auc, support}
  confusion_matrix   rows = true class, columns = predicted class

Classes absent from the split's labels are left out of balanced_accuracy, macro_f1 and auc_ovr
(their recall is undefined); the precision of a class never predicted is 0.0. QWK is 1.0 when
truth and prediction are the same single class (its denominator is then zero).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from retina_jax import io_utils

HEADS = ("softmax", "regression")
THRESHOLD_CANDIDATES = 41   # values tried for each regression threshold between its neighbours
THRESHOLD_ROUNDS = 3        # coordinate-ascent sweeps over the thresholds


def example_weights(batch: dict, class_weights: jnp.ndarray) -> jnp.ndarray:
    """(B,) loss weight of each example: its class's weight, 0 for padding / unlabelled ones."""
    weight = class_weights[batch["label"]]
    weight = weight * batch.get("valid", 1.0)
    return weight * batch["labelled"] if "labelled" in batch else weight


def loss(outputs: jnp.ndarray, batch: dict, *, head: str, class_weights: jnp.ndarray,
         label_smoothing: float = 0.0) -> jnp.ndarray:
    """Class-weighted mean loss of one batch (float32 whatever the compute dtype)."""
    outputs = jnp.asarray(outputs, jnp.float32)
    labels = batch["label"]
    if head == "softmax":
        targets = optax.smooth_labels(jax.nn.one_hot(labels, outputs.shape[-1]), label_smoothing)
        per_example = optax.softmax_cross_entropy(outputs, targets)
    elif head == "regression":
        per_example = jnp.square(outputs[:, 0] - labels.astype(jnp.float32))
    else:
        raise ValueError(f"config.classification.head must be one of {HEADS}, got {head!r}.")
    weights = example_weights(batch, class_weights)
    total_weight = jnp.sum(weights)
    return jnp.where(total_weight > 0, jnp.sum(per_example * weights) / jnp.maximum(total_weight, 1e-12), 0.0)


def scores(outputs: jnp.ndarray, head: str) -> jnp.ndarray:
    """What evaluation keeps per example: softmax probabilities (B, K), or the raw output (B, 1)."""
    outputs = jnp.asarray(outputs, jnp.float32)
    return jax.nn.softmax(outputs, axis=-1) if head == "softmax" else outputs


def balanced_class_weights(class_counts: np.ndarray) -> np.ndarray:
    """n / (K n_k) for each class k (0 for a class with no example): each class's total weight
    in an epoch is then the same, n / K."""
    counts = np.asarray(class_counts, np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)


def resolve_class_weights(setting: str, class_counts: np.ndarray) -> np.ndarray:
    """The config's `class_weights` ("none", "balanced", or K comma-separated numbers such as
    "1,2.5,1,1") as a (K,) float32 array."""
    num_classes = len(class_counts)
    if setting == "none":
        return np.ones(num_classes, np.float32)
    if setting == "balanced":
        return balanced_class_weights(class_counts)
    try:
        weights = np.array([float(part) for part in setting.split(",")], np.float32)
    except ValueError:
        weights = None
    if weights is None or weights.shape != (num_classes,) or np.any(weights < 0):
        raise ValueError(f"config.classification.class_weights must be 'none', 'balanced' or "
                         f"{num_classes} comma-separated non-negative numbers (one per class), "
                         f"got {setting!r}.")
    return weights


def default_thresholds(num_classes: int) -> np.ndarray:
    return np.arange(num_classes - 1, dtype=np.float64) + 0.5


def predict(example_scores: np.ndarray, head: str, thresholds: np.ndarray | None = None) -> np.ndarray:
    """(N,) predicted classes from `scores` (N, K) (softmax) or (N, 1) (regression)."""
    if head == "softmax":
        return np.argmax(example_scores, axis=-1)
    return np.sum(example_scores[:, :1] >= np.asarray(thresholds)[None, :], axis=1)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts: rows = true class, columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return matrix


def quadratic_weighted_kappa(matrix: np.ndarray) -> float:
    """Cohen's kappa with weights (i - j)^2 / (K - 1)^2 from a confusion matrix."""
    matrix = np.asarray(matrix, np.float64)
    num_classes = len(matrix)
    grades = np.arange(num_classes)
    weights = np.square(grades[:, None] - grades[None, :]) / max(num_classes - 1, 1) ** 2
    expected = np.outer(matrix.sum(axis=1), matrix.sum(axis=0)) / max(matrix.sum(), 1)
    disagreement_expected = np.sum(weights * expected)
    if disagreement_expected == 0:
        return 1.0
    return float(1.0 - np.sum(weights * matrix) / disagreement_expected)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), np.float64)
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + 1 + end) / 2
    return ranks


def auc_roc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """Exact AUC-ROC (Mann-Whitney U / (n_pos n_neg)); None without both classes."""
    positive = np.asarray(positive, bool)
    num_positive, num_negative = int(positive.sum()), int((~positive).sum())
    if num_positive == 0 or num_negative == 0:
        return None
    rank_sum = average_ranks(np.asarray(score, np.float64))[positive].sum()
    return float((rank_sum - num_positive * (num_positive + 1) / 2) / (num_positive * num_negative))


def summarize(labels: np.ndarray, example_scores: np.ndarray, *, head: str, class_names: list[str],
              thresholds: np.ndarray | None = None) -> dict:
    """The split's metrics (see the module docstring) from every example's label and scores."""
    labels = np.asarray(labels, np.int64)
    num_classes = len(class_names)
    if head == "regression" and thresholds is None:
        thresholds = default_thresholds(num_classes)
    predictions = predict(example_scores, head, thresholds)
    matrix = confusion_matrix(labels, predictions, num_classes)
    one_vs_rest = (example_scores if head == "softmax"
                   else -np.abs(example_scores[:, :1] - np.arange(num_classes)[None, :]))
    per_class, present = {}, []
    for k, name in enumerate(class_names):
        true_positives, support, predicted = matrix[k, k], matrix[k].sum(), matrix[:, k].sum()
        precision = true_positives / predicted if predicted else 0.0
        recall = true_positives / support if support else None
        f1 = (2 * precision * recall / (precision + recall) if recall is not None and precision + recall > 0
              else (0.0 if recall is not None else None))
        per_class[name] = {"precision": float(precision),
                           "recall": None if recall is None else float(recall),
                           "f1": None if f1 is None else float(f1),
                           "auc": auc_roc(one_vs_rest[:, k], labels == k), "support": int(support)}
        if support:
            present.append(name)
    aucs = [per_class[name]["auc"] for name in present if per_class[name]["auc"] is not None]
    results = {
        "num_examples": int(len(labels)),
        "accuracy": float(np.trace(matrix) / max(len(labels), 1)),
        "balanced_accuracy": float(np.mean([per_class[name]["recall"] for name in present])) if present else None,
        "macro_f1": float(np.mean([per_class[name]["f1"] for name in present])) if present else None,
        "auc_ovr": float(np.mean(aucs)) if aucs else None,
        "qwk": quadratic_weighted_kappa(matrix),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "class_names": list(class_names),
    }
    if head == "regression":
        results["thresholds"] = [float(value) for value in thresholds]
    return results


def tune_thresholds(labels: np.ndarray, outputs: np.ndarray, num_classes: int) -> np.ndarray:
    """Ascending regression thresholds maximising QWK on (labels, outputs (N, 1)).

    Coordinate ascent from k - 0.5: each threshold in turn tries `THRESHOLD_CANDIDATES` values
    evenly spaced between its neighbours and keeps the best (the first on ties, so the result
    is deterministic); `THRESHOLD_ROUNDS` sweeps.
    """
    labels = np.asarray(labels, np.int64)
    thresholds = default_thresholds(num_classes)
    low_end, high_end = float(np.min(outputs)) - 1.0, float(np.max(outputs)) + 1.0

    def kappa(candidate):
        return quadratic_weighted_kappa(confusion_matrix(labels, predict(outputs, "regression", candidate),
                                                         num_classes))

    best = kappa(thresholds)
    for _ in range(THRESHOLD_ROUNDS):
        for index in range(len(thresholds)):
            low = thresholds[index - 1] if index > 0 else min(low_end, thresholds[index])
            high = thresholds[index + 1] if index + 1 < len(thresholds) else max(high_end, thresholds[index])
            for value in np.linspace(low, high, THRESHOLD_CANDIDATES)[1:-1]:
                candidate = thresholds.copy()
                candidate[index] = value
                candidate_kappa = kappa(candidate)
                if candidate_kappa > best:
                    best, thresholds = candidate_kappa, candidate
    return thresholds


def case_rows(labels: np.ndarray, example_scores: np.ndarray, info: dict, *, head: str,
              class_names: list[str], thresholds: np.ndarray | None = None) -> list[dict]:
    """One row per example: its identifying `info` (id, ...), label, prediction and scores."""
    predictions = predict(example_scores, head, thresholds if thresholds is not None
                          else default_thresholds(len(class_names)))
    rows = []
    for index in range(len(labels)):
        row = {key: io_utils.plain_value(values[index]) for key, values in info.items()}
        row.update(label=int(labels[index]), predicted=int(predictions[index]),
                   correct=bool(labels[index] == predictions[index]))
        if head == "softmax":
            row.update({f"p_{name}": round(float(p), 6) for name, p in zip(class_names, example_scores[index])})
        else:
            row["output"] = round(float(example_scores[index, 0]), 6)
        rows.append(row)
    return rows
