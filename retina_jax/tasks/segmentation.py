"""Binary segmentation: logits (B,H,W,1) against `mask` (B,H,W,1) in {0,1}.

Pixels count towards losses and metrics only for labelled, non-padding examples.
"""
import jax
import jax.numpy as jnp

from retina_jax import metrics


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


def summarize(counts: dict) -> dict:
    """Split-level metrics (snake_case) from accumulated counts, plus `num_examples`.

    A split without ground truth has no metrics: only `num_examples` and `labelled: False`.
    """
    summary = {"num_examples": int(counts["num_examples"])}
    if int(counts["num_labelled"]) == 0:
        return {**summary, "labelled": False}
    return {**metrics.compute_segmentation_metrics(counts), **summary}
