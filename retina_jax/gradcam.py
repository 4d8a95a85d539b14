"""Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhay et al. 2018) for any registered
model and any named layer, for classifiers and (Seg-Grad-CAM, Vinogradova et al. 2020)
segmentation networks.

Usage:
  explanation = gradcam.classification_cam(model, variables, images, class_index=-1)
  explanation = gradcam.segmentation_cam(model, variables, images, region=None)  # predicted mask
  explanation = gradcam.segmentation_cam(model, variables, images, gradcam.box_region(boxes, (H, W)),
                                         layer="bottleneck", method="gradcam_pp")
  explanation.heatmaps   # (B, H, W) in [0, 1], at input size
  gradcam.feature_map_layers(gradcam.layer_calls(model, variables, images))  # layers to explain
  python -m retina_jax.main --config=configs/duke_fluid.py --workdir=runs/duke_fluid --mode=gradcam

How the activation and its gradient are read (nothing changes at training time):
  The target layer's output A gets a zero perturbation added, `A + delta`, through linen's
  `perturb` (the `perturbations` collection). The gradient of the target score with respect to
  `delta` at 0 is the gradient with respect to A, and A itself is sown into `intermediates`.
  Every model has an `Identity(name="pre_logits")` hook that already perturbs and sows its
  input (models/layers.py). Any other layer (a module path such as "encoder2" or
  "decoder0/conv1") gets the same two calls from an `nn.intercept_methods` interceptor that wraps
  that one module's `__call__` (a module called once per forward pass, with a (B, h, w, C)
  output): no model code is edited, and without the interceptor and the collection `perturb`
  is a no-op. The zero `perturbations` tree is built with `jax.eval_shape`
  for each batch shape, inside the jitted function.

Maps: weights per channel from the gradient (Grad-CAM: its spatial mean; Grad-CAM++: the
closed form with exp(score) of Chattopadhay et al. eq. 19, as pytorch-grad-cam computes it),
`raw_maps = ReLU(sum_k weight_k A_k)` at the layer's resolution, then bilinearly upsampled to the
input and divided by each image's maximum (`heatmaps`; an all-zero map stays zero).

Targets: a classifier's class logit (`class_index`, -1 = the predicted class; a one-output
regression head explains that output); a segmentation network's
`(logits[..., channel] * region).sum()` over a region: the predicted mask (sigmoid >= threshold),
a ground-truth mask, or a box (`box_region`). A region that is empty gives an all-zero map.
Right before a 1x1 convolution head (the segmentation models' `pre_logits`) the gradient is
region_ij w_k, so the Grad-CAM map is ReLU(logits - bias) up to a factor, whatever the region:
to see which context a region's prediction draws on, explain a deeper layer ("bottleneck").
"""
import functools
import math
import re
from pathlib import Path
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from retina_jax import io_utils, train, viz
from retina_jax.data import pipeline
from retina_jax.models.layers import Identity
from retina_jax.tasks import classification

METHODS = ("gradcam", "gradcam_pp")
DEFAULT_LAYER = "pre_logits"
# The entry `layers.Identity` perturbs and sows; the interceptor uses its own name so that it
# never collides with a hook the layer already has.
IDENTITY_ENTRY = "activation"
INTERCEPT_ENTRY = "gradcam_activation"


class Explanation(NamedTuple):
    heatmaps: jax.Array      # (B, H, W) float32 in [0, 1], at input size
    raw_maps: jax.Array      # (B, h, w) float32 >= 0, at the layer's size, before normalising
    outputs: jax.Array       # the model's outputs (logits)
    target_class: jax.Array  # (B,) int32: the class (classifiers) or channel (segmentation) explained


class LayerCall(NamedTuple):
    """One module's `__call__` in a forward pass: its output shape (None if not one array) and
    whether it is an `Identity` hook."""
    output_shape: tuple[int, ...] | None
    is_identity_hook: bool


def _layer_hook(layer: str | None, calls: dict[str, list[LayerCall]]):
    """An interceptor that records every submodule call in `calls` and, unless that module is an
    `Identity` hook (which does it itself), perturbs and sows the output of the first call of
    the module at path `layer` (None: none)."""
    def intercept(next_fun, args, kwargs, context):
        output = next_fun(*args, **kwargs)
        if context.method_name != "__call__" or not context.module.path:
            return output
        path = "/".join(context.module.path)
        is_hook = isinstance(context.module, Identity)
        shape = tuple(output.shape) if isinstance(output, jax.Array) else None
        first_call = path not in calls
        calls.setdefault(path, []).append(LayerCall(shape, is_hook))
        if path == layer and first_call and not is_hook and shape is not None:
            output = context.module.perturb(INTERCEPT_ENTRY, output)
            context.module.sow("intermediates", INTERCEPT_ENTRY, output)
        return output
    return intercept


def _apply(model: nn.Module, variables, images, layer: str | None, calls: dict, mutable: list[str]):
    with nn.intercept_methods(_layer_hook(layer, calls)):
        return model.apply(variables, images, train=False, mutable=mutable)


def layer_calls(model: nn.Module, variables, images) -> dict[str, list[LayerCall]]:
    """Every submodule path ("encoder2/conv0") called by `model` on `images`, with its calls
    (shapes only: traced with jax.eval_shape)."""
    calls: dict[str, list[LayerCall]] = {}
    jax.eval_shape(lambda: _apply(model, variables, images, None, calls, []))
    return calls


def feature_map_layers(calls: dict[str, list[LayerCall]]) -> list[str]:
    """The paths Grad-CAM can explain: modules called once with a (B, h, w, C) output."""
    return sorted(path for path, seen in calls.items()
                  if len(seen) == 1 and seen[0].output_shape is not None and len(seen[0].output_shape) == 4)


def check_layer(calls: dict[str, list[LayerCall]], layer: str) -> LayerCall:
    """The single call of `layer`, or a ValueError naming the layers that can be explained."""
    if layer not in feature_map_layers(calls):
        reason = ("is not a module of this model" if layer not in calls else
                  f"is called {len(calls[layer])} times per forward pass" if len(calls[layer]) > 1 else
                  f"outputs {calls[layer][0].output_shape}, not one (B, h, w, C) feature map")
        raise ValueError(f"Grad-CAM layer {layer!r} {reason}; layers with a feature map: "
                         f"{', '.join(feature_map_layers(calls))}.")
    return calls[layer][0]


def activation_and_gradient(model: nn.Module, variables, images, score_fn: Callable, layer: str
                            ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(activation (B,h,w,C), d score / d activation, model outputs) at `layer`, where
    `score_fn(outputs)` gives each example's (B,) target score (examples are independent in
    evaluation mode, so the gradient of their sum is each one's own).

    One shape-only pass finds the layer and the zero `perturbations` tree; the traced pass
    differentiates with respect to the layer's entry in it."""
    calls: dict[str, list[LayerCall]] = {}
    _, shapes = jax.eval_shape(lambda: _apply(model, variables, images, layer, calls, ["perturbations"]))
    call = check_layer(calls, layer)
    entry = (*layer.split("/"), IDENTITY_ENTRY if call.is_identity_hook else INTERCEPT_ENTRY)
    zeros = traverse_util.flatten_dict(
        jax.tree.map(lambda shape: jnp.zeros(shape.shape, shape.dtype), shapes["perturbations"]))

    def score(delta):
        perturbations = traverse_util.unflatten_dict({**zeros, entry: delta})
        outputs, state = _apply(model, {**variables, "perturbations": perturbations}, images, layer,
                                {}, ["intermediates"])
        activation = traverse_util.flatten_dict(state["intermediates"])[entry][0]
        return jnp.sum(score_fn(outputs)), (activation, outputs)

    gradient, (activation, outputs) = jax.grad(score, has_aux=True)(zeros[entry])
    return activation, gradient, outputs


def channel_weights(activation: jax.Array, gradient: jax.Array, method: str) -> jax.Array:
    """(B, C) weight of each feature channel.

    gradcam:    alpha_k = mean_ij dS/dA_ijk.
    gradcam_pp: w_k = sum_ij a_ijk ReLU(g_ijk), a_ijk = g^2 / (2 g^2 + sum_ab A_abk g^3)
                (0 where that denominator is 0): the closed form for the score exp(S), whose
                higher derivatives are powers of the first (Chattopadhay et al. 2018, eq. 19).
    """
    if method == "gradcam":
        return jnp.mean(gradient, axis=(1, 2))
    if method == "gradcam_pp":
        squared = jnp.square(gradient)
        denominator = 2 * squared + jnp.sum(activation, axis=(1, 2), keepdims=True) * squared * gradient
        safe = jnp.where(denominator != 0, denominator, 1.0)
        alpha = jnp.where(denominator != 0, squared / safe, 0.0)
        return jnp.sum(alpha * nn.relu(gradient), axis=(1, 2))
    raise ValueError(f"Grad-CAM method must be one of {METHODS}, got {method!r}.")


def class_activation_map(activation: jax.Array, gradient: jax.Array, method: str) -> jax.Array:
    """(B, h, w) ReLU(sum_k w_k A_k): only what raises the target score."""
    activation, gradient = activation.astype(jnp.float32), gradient.astype(jnp.float32)
    weights = channel_weights(activation, gradient, method)
    return nn.relu(jnp.einsum("bhwk,bk->bhw", activation, weights))


def upsample(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """(B, h, w) maps at input size (H, W): bilinear resize to (s_h h, s_w w), s = ceil(H / h),
    then the top-left (H, W). A map with stride s covers s h input pixels: the models pad their
    inputs at the bottom / right to a multiple of their stride and crop their outputs the same
    way, so a padded layer's map lines up with the image (a plain resize would stretch it)."""
    height, width = size
    batch, map_height, map_width = maps.shape
    covered = (map_height * math.ceil(height / map_height), map_width * math.ceil(width / map_width))
    return jax.image.resize(maps, (batch, *covered), "bilinear")[:, :height, :width]


def normalize(maps: jax.Array) -> jax.Array:
    """Each (B, H, W) map divided by its maximum; an all-zero map stays zero."""
    peak = jnp.max(maps, axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, maps / jnp.where(peak > 0, peak, 1.0), 0.0)


def explain(model: nn.Module, variables, images: jax.Array, score_fn: Callable, target_class: Callable,
            *, layer: str = DEFAULT_LAYER, method: str = "gradcam") -> Explanation:
    """Grad-CAM of the (B,) scores `score_fn(outputs)`; `target_class(outputs)` records what
    was explained. Pure and traceable: `classification_cam` and `segmentation_cam` jit it."""
    if method not in METHODS:
        raise ValueError(f"Grad-CAM method must be one of {METHODS}, got {method!r}.")
    activation, gradient, outputs = activation_and_gradient(model, variables, images, score_fn, layer)
    raw_maps = class_activation_map(activation, gradient, method)
    heatmaps = normalize(upsample(raw_maps, images.shape[1:3]))
    return Explanation(heatmaps, raw_maps, outputs, target_class(outputs))


def explained_classes(outputs: jax.Array, class_index) -> jax.Array:
    """(B,) class of each example to explain: `class_index` (int or (B,)), -1 = the predicted
    class (argmax; a one-output regression head: its output, class 0)."""
    requested = jnp.broadcast_to(jnp.asarray(class_index, jnp.int32), outputs.shape[:1])
    return jnp.where(requested < 0, jnp.argmax(outputs, axis=-1).astype(jnp.int32), requested)


@functools.partial(jax.jit, static_argnames=("model", "layer", "method"))
def classification_cam(model: nn.Module, variables, images: jax.Array, class_index=-1, *,
                       layer: str = DEFAULT_LAYER, method: str = "gradcam") -> Explanation:
    """Grad-CAM of a classifier's class logit (outputs (B, K)) for each image."""
    def chosen(outputs):
        return explained_classes(jax.lax.stop_gradient(outputs), class_index)

    def score(outputs):
        return jnp.take_along_axis(outputs, chosen(outputs)[:, None], axis=-1)[:, 0]

    return explain(model, variables, images, score, chosen, layer=layer, method=method)


@functools.partial(jax.jit, static_argnames=("model", "layer", "method", "channel"))
def segmentation_cam(model: nn.Module, variables, images: jax.Array, region: jax.Array | None = None,
                     *, channel: int = 0, threshold: float = 0.5, layer: str = DEFAULT_LAYER,
                     method: str = "gradcam") -> Explanation:
    """Seg-Grad-CAM of `(logits[..., channel] * region).sum()` for each image (logits (B, H, W,
    K)); `region` (B, H, W) in [0, 1], e.g. a ground-truth mask or `box_region`; None = the
    predicted mask, sigmoid(logits[..., channel]) >= threshold."""
    def region_of(outputs):
        if region is not None:
            return region
        return (jax.nn.sigmoid(jax.lax.stop_gradient(outputs[..., channel])) >= threshold).astype(jnp.float32)

    def score(outputs):
        return jnp.sum(outputs[..., channel] * region_of(outputs), axis=(1, 2))

    def explained(outputs):
        return jnp.full(outputs.shape[:1], channel, jnp.int32)

    return explain(model, variables, images, score, explained, layer=layer, method=method)


def box_region(boxes, size: tuple[int, int]) -> jax.Array:
    """(B, H, W) float32 region of the (B, 4) boxes (y0, x0, y1, x1), pixels y0 <= y < y1 and
    x0 <= x < x1; a box outside the image is an empty region."""
    boxes = jnp.asarray(boxes)
    rows = jnp.arange(size[0])[None, :, None]
    columns = jnp.arange(size[1])[None, None, :]
    y0, x0, y1, x1 = (boxes[:, i, None, None] for i in range(4))
    return ((rows >= y0) & (rows < y1) & (columns >= x0) & (columns < x1)).astype(jnp.float32)


# --mode=gradcam, and the pictures the training loop can log at each evaluation.

SEGMENTATION_REGIONS = ("predicted", "ground_truth")
MIN_PANEL_WIDTH = 320  # small images are enlarged until image | overlay is this wide (captions fit)


def first_examples_of_split(builder, split: str, config, num_images: int) -> dict[str, np.ndarray]:
    """The first `num_images` examples of `split` as evaluation reads it (preprocessed, and
    selected as config selects it: under cross-validation the validation split is the held-out
    fold), as one batch. Every process reads them all, not its share as evaluation does: each
    explains the same images, and process 0 writes all of them. Uncached: only a few are read."""
    uncached = config.copy_and_resolve_references()
    uncached.dataset.cache = False
    dataset, _ = pipeline.eval_dataset(builder, split, uncached, local_batch_size=config.eval.batch_size,
                                       process_index=0, process_count=1)
    return first_examples(dataset, num_images)


def first_examples(dataset, num_images: int) -> dict[str, np.ndarray]:
    """The first `num_images` examples of a batched evaluation dataset, as one batch."""
    batches, count = [], 0
    for batch in dataset.as_numpy_iterator():
        batches.append(batch)
        count += len(batch["image"])
        if count >= num_images:
            break
    if not batches:
        raise ValueError("The split to explain has no examples.")
    return {key: np.concatenate([batch[key] for batch in batches])[:num_images] for key in batches[0]}


def annotated_regions(examples: dict[str, np.ndarray], masks: np.ndarray | None = None) -> np.ndarray | None:
    """(N, H, W) bool annotated region of each example (empty for unlabelled ones): its `mask`,
    or `masks` read separately; None when there are none."""
    masks = examples.get("mask") if masks is None else masks
    if masks is None:
        return None
    return (masks[..., 0] > 0.5) & (examples["labelled"][:, None, None] > 0)


def masks_behind_labels(experiment, split: str, examples: dict[str, np.ndarray]) -> np.ndarray | None:
    """With config.dataset.label_from_mask the label came from a mask the pipeline then dropped:
    the same examples read again with their masks kept (same order; ids checked). Else None."""
    if not experiment.config.dataset.label_from_mask:
        return None
    mask_config = experiment.config.copy_and_resolve_references()
    mask_config.dataset.label_from_mask = False
    with_masks = first_examples_of_split(experiment.builder, split, mask_config, len(examples["image"]))
    if "id" in examples and not np.array_equal(with_masks["id"], examples["id"]):
        raise RuntimeError(f"Reading {split!r} again for its masks gave other examples.")
    return with_masks["mask"]


def check_settings(config) -> None:
    """Fails fast, before any data or checkpoint is read, on config.gradcam values that cannot
    work with this config (the layer is checked against the model when it is traced)."""
    settings = config.gradcam
    if settings.method not in METHODS:
        raise ValueError(f"config.gradcam.method must be one of {METHODS}, got {settings.method!r}.")
    if settings.target_class >= config.model.num_classes:
        raise ValueError(f"config.gradcam.target_class={settings.target_class}, but the model has "
                         f"{config.model.num_classes} output(s): 0..{config.model.num_classes - 1}, "
                         "or -1 (predicted class).")
    if config.task == "segmentation" and settings.seg_region not in SEGMENTATION_REGIONS:
        raise ValueError(f"config.gradcam.seg_region must be one of {SEGMENTATION_REGIONS}, "
                         f"got {settings.seg_region!r}.")


def explain_images(model, variables, images: np.ndarray, regions: np.ndarray | None, config) -> Explanation:
    """config.gradcam's Grad-CAM of `images`, in batches of config.eval.batch_size (the last one
    padded, so one program is compiled), as numpy. Segmentation explains the predicted mask or
    the annotated `regions` (config.gradcam.seg_region)."""
    settings = config.gradcam
    use_regions = config.task == "segmentation" and settings.seg_region == "ground_truth"
    if use_regions and regions is None:
        raise ValueError("config.gradcam.seg_region='ground_truth' needs ground-truth masks; the "
                         f"split of {config.dataset.name} has none.")
    batch_size = min(config.eval.batch_size, len(images))
    parts = []
    for start in range(0, len(images), batch_size):
        chunk = _padded(images[start:start + batch_size], batch_size)
        if config.task == "classification":
            explanation = classification_cam(model, variables, chunk, settings.target_class,
                                             layer=settings.layer, method=settings.method)
        else:
            region = _padded(regions[start:start + batch_size], batch_size).astype(np.float32) if use_regions else None
            explanation = segmentation_cam(model, variables, chunk, region, channel=max(settings.target_class, 0),
                                           threshold=config.eval.threshold, layer=settings.layer,
                                           method=settings.method)
        parts.append(jax.tree.map(lambda values: np.asarray(values)[:len(images) - start], explanation))
    return jax.tree.map(lambda *values: np.concatenate(values), *parts)


def _padded(values: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([values, np.zeros((size - len(values), *values.shape[1:]), values.dtype)])


def energy_inside(heatmap: np.ndarray, region: np.ndarray) -> float | None:
    """Share of the map's energy (sum of the normalised map) inside `region` (energy-based
    pointing game, Wang et al. 2020, Score-CAM); None for an empty region or an all-zero map."""
    total = float(heatmap.sum())
    if not region.any() or total <= 0:
        return None
    return float(heatmap[region].sum()) / total


def pointing_game(heatmaps: np.ndarray, regions: np.ndarray) -> tuple[list[dict], dict]:
    """Per image {energy_inside, region_fraction}, and their means over the images scored
    (non-empty region, non-zero map). A uniform map puts `region_fraction` of its energy inside,
    so `mean_region_fraction` is the chance level `mean_energy_inside` is to be compared with."""
    per_image = [{"energy_inside": energy_inside(heatmap, region), "region_fraction": float(region.mean())}
                 for heatmap, region in zip(heatmaps, regions)]
    scored = [row for row in per_image if row["energy_inside"] is not None]
    return per_image, {
        "num_images_with_region": int(sum(region.any() for region in regions)),
        "num_images_scored": len(scored),
        "mean_energy_inside": float(np.mean([row["energy_inside"] for row in scored])) if scored else None,
        "mean_region_fraction": float(np.mean([row["region_fraction"] for row in scored])) if scored else None,
    }


def image_rows(config, examples: dict[str, np.ndarray], explanation: Explanation,
               class_names: list[str] | None) -> list[dict]:
    """One JSON-ready row per image: id, and for classifiers the true / predicted class (the
    regression head: at the default thresholds k - 0.5), the probability (softmax) or output
    (regression), and the class explained."""
    rows = []
    for index in range(len(explanation.heatmaps)):
        row = {"id": io_utils.plain_value(examples["id"][index]) if "id" in examples else str(index)}
        if config.task == "classification":
            outputs = explanation.outputs[index][None]
            scores = np.asarray(classification.scores(outputs, config.classification.head))
            predicted = int(classification.predict(
                scores, config.classification.head,
                classification.default_thresholds(len(class_names)))[0])
            labelled = examples["labelled"][index] > 0
            row.update(true_class=class_names[int(examples["label"][index])] if labelled else None,
                       predicted_class=class_names[predicted],
                       explained_class=class_names[int(explanation.target_class[index])])
            if config.classification.head == "softmax":
                row["probability"] = float(scores[0, predicted])
            else:
                row["output"] = float(scores[0, 0])
        rows.append(row)
    return rows


def caption_lines(config, row: dict) -> list[str]:
    settings = config.gradcam
    lines = [str(row["id"])]
    if config.task == "classification":
        confidence = (f"p={row['probability']:.2f}" if "probability" in row else f"output {row['output']:.2f}")
        lines.append(f"true {row['true_class'] or '?'}  predicted {row['predicted_class']} ({confidence})")
        lines.append(f"{settings.method} of {row['explained_class']} at {settings.layer}")
    else:
        lines.append(f"seg-{settings.method} of the {settings.seg_region} mask at {settings.layer}")
    if row.get("energy_inside") is not None:
        lines.append(f"energy in mask {row['energy_inside']:.2f} (area {row['region_fraction']:.2f})")
    return lines


def panel(image: np.ndarray, heatmap: np.ndarray, region: np.ndarray | None, lines: list[str]) -> np.ndarray:
    """image | heatmap overlay (the annotated region outlined in green), enlarged if small, under
    its caption lines."""
    overlay = viz.heatmap_overlay(image, heatmap)
    grey = viz.to_grey_rgb(image)
    if region is not None and region.any():
        overlay = viz.draw_outline(overlay, region)
    pictures = np.concatenate([grey, np.full((grey.shape[0], 2, 3), 255, np.uint8), overlay], axis=1)
    factor = max(1, math.ceil(MIN_PANEL_WIDTH / pictures.shape[1]))
    return viz.captioned(viz.enlarge(pictures, factor), lines)


def local_copy(tree):
    """The replicated arrays of `tree` as held by this process's first device: each process then
    explains images on its own (no collective), and the results are its to read."""
    return jax.tree.map(lambda array: array.addressable_data(0), tree)


def explain_examples(experiment, state, examples: dict[str, np.ndarray], masks: np.ndarray | None = None
                     ) -> tuple[list[dict], list[np.ndarray], dict | None]:
    """Grad-CAM of `examples` with `state`: the rows (see `image_rows`, plus the pointing game
    when there are annotated regions), the panels, and the pointing game's means (None
    without annotated regions)."""
    config = experiment.config
    regions = annotated_regions(examples, masks)
    variables = local_copy(train.evaluation_variables(state))
    explanation = explain_images(experiment.model, variables, examples["image"], regions, config)
    rows = image_rows(config, examples, explanation, getattr(experiment, "class_names", None))
    summary = None
    if regions is not None:
        per_image, summary = pointing_game(explanation.heatmaps, regions)
        rows = [{**row, **scores} for row, scores in zip(rows, per_image)]
    outlined = [None] * len(rows) if regions is None else list(regions)
    panels = [panel(image, heatmap, region, caption_lines(config, row))
              for image, heatmap, region, row in zip(examples["image"], explanation.heatmaps, outlined, rows)]
    return rows, panels, summary


def preview_examples(experiment) -> dict[str, np.ndarray]:
    """The validation examples whose maps training logs to TensorBoard at each evaluation: the
    first config.gradcam.num_images, the same in every process (read once, before training)."""
    config = experiment.config
    check_settings(config)
    return first_examples_of_split(experiment.builder, config.dataset.validation_split, config,
                                   config.gradcam.num_images)


def evaluation_images(experiment, state, examples: dict[str, np.ndarray]) -> np.ndarray:
    """The contact sheet of config.gradcam's maps of `examples` (`preview_examples`) with
    `state`, for TensorBoard. Annotated regions are outlined when the examples carry masks."""
    _, panels, _ = explain_examples(experiment, state, examples)
    return viz.contact_sheet(panels)


def run(config, workdir: str) -> dict:
    """--mode=gradcam: explains the first config.gradcam.num_images examples of
    config.gradcam.split with the checkpoint --mode=evaluate uses, into
    workdir/gradcam/<split>/:

      <NNN>_<id>.png     image | heatmap overlay, captioned (classifiers: true / predicted class
                         and probability); the annotated region outlined when there is one
      contact_sheet.png  every panel in one grid
      summary.json       settings, checkpoint_step, one row per image; with annotated regions
                         (segmentation masks, or the masks behind dataset.label_from_mask
                         labels) the energy-based pointing game: per image `energy_inside` and
                         `region_fraction`, and `pointing_game` with their means
    Returns the summary. Multi-process: every process explains all of those examples on its
    own devices (a few images; no collective) and process 0 writes them."""
    check_settings(config)
    workdir = Path(workdir)
    experiment = train.Experiment(config)
    state, step = train.restore_evaluation_checkpoint(experiment, workdir)
    settings = config.gradcam
    examples = first_examples_of_split(experiment.builder, settings.split, config, settings.num_images)
    rows, panels, pointing = explain_examples(experiment, state, examples,
                                              masks_behind_labels(experiment, settings.split, examples))
    for index, row in enumerate(rows):
        row["file"] = f"{index:03d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(row['id']))}.png"
    summary = {"checkpoint_step": step, "split": settings.split, "model": config.model.name,
               "task": config.task, "layer": settings.layer, "method": settings.method,
               "target_class": settings.target_class, "images": rows}
    if config.task == "segmentation":
        summary["seg_region"] = settings.seg_region
    if pointing is not None:
        summary["pointing_game"] = pointing
    out_dir = workdir / "gradcam" / settings.split
    if jax.process_index() == 0:
        for row, picture in zip(rows, panels):
            io_utils.write_png(out_dir / row["file"], picture)
        io_utils.write_png(out_dir / "contact_sheet.png", viz.contact_sheet(panels))
        io_utils.write_json(out_dir / "summary.json", summary)
    logging.info("Wrote %d Grad-CAM overlays, contact_sheet.png and summary.json to %s%s", len(rows), out_dir,
                 f"; pointing game: {pointing}" if pointing is not None else "")
    return summary
