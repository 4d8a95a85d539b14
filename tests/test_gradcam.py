"""Grad-CAM / Grad-CAM++ / Seg-Grad-CAM (retina_jax/gradcam.py): exact maps on a model whose
score is linear in the activation, localisation and the weight-randomisation sanity check on a
small CNN trained here, every registered model, and --mode=gradcam end to end."""
import json
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats
from test_model_zoo import TINY

from retina_jax import checkpoint, gradcam, models, train, viz
from retina_jax.models.layers import Identity
from retina_jax.ops import onednn_conv

REPO = Path(__file__).resolve().parents[1]


class PooledLinear(nn.Module):
    """conv "features" -> Identity "pre_logits" -> global average pool -> Dense: each class
    score is linear in the pre_logits activation A, S_c = sum_k W_kc mean_ij A_ijk + b_c."""
    num_classes: int = 3

    @nn.compact
    def __call__(self, images, *, train: bool):
        x = nn.Conv(5, (3, 3), name="features")(images)
        x = Identity(name="pre_logits")(x)
        return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


@pytest.fixture(scope="module")
def pooled_linear():
    model = PooledLinear()
    images = jnp.asarray(np.random.default_rng(0).normal(size=(3, 6, 8, 2)), jnp.float32)
    variables = model.init(jax.random.key(0), images, train=False)
    _, state = model.apply(variables, images, train=False, mutable=["intermediates"])
    activation = np.asarray(state["intermediates"]["pre_logits"]["activation"][0])
    return model, variables, images, activation


def hand_gradcam(activation, kernel, classes, method):
    """The maps by hand: for S_c = sum_k W_kc mean_ij A_ijk the gradient is W_kc / (h w) at every
    position. Grad-CAM: weights W_kc / (h w). Grad-CAM++: a_k = g^2 / (2 g^2 + g^3 sum_ij A_ijk)
    = 1 / (2 + g sum_ij A_ijk), weights h w a_k ReLU(g)."""
    batch, height, width, _ = activation.shape
    maps = []
    for b in range(batch):
        g = kernel[:, classes[b]] / (height * width)
        if method == "gradcam":
            weights = g
        else:
            totals = activation[b].sum(axis=(0, 1))
            weights = height * width * np.maximum(g, 0) / (2 + g * totals)
        maps.append(np.maximum(activation[b] @ weights, 0))
    return np.stack(maps)


@pytest.mark.parametrize("method", gradcam.METHODS)
def test_maps_equal_the_hand_computed_ones_for_a_score_linear_in_the_activation(pooled_linear, method):
    model, variables, images, activation = pooled_linear
    kernel = np.asarray(variables["params"]["head"]["kernel"])
    classes = np.array([0, 2, 1])
    explanation = gradcam.classification_cam(model, variables, images, jnp.asarray(classes), method=method)
    expected = hand_gradcam(activation, kernel, classes, method)
    assert expected.max() > 0
    np.testing.assert_allclose(explanation.raw_maps, expected, rtol=1e-4, atol=1e-6)
    peaks = expected.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(explanation.heatmaps, np.where(peaks > 0, expected / peaks, 0), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(explanation.target_class, classes)


def test_predicted_class_by_default_and_any_layer_through_the_interceptor(pooled_linear):
    model, variables, images, _ = pooled_linear
    at_hook = gradcam.classification_cam(model, variables, images)
    np.testing.assert_array_equal(at_hook.target_class, np.argmax(at_hook.outputs, axis=-1))
    # "features" is a plain nn.Conv whose output feeds the Identity hook unchanged.
    at_conv = gradcam.classification_cam(model, variables, images, layer="features")
    np.testing.assert_allclose(at_conv.raw_maps, at_hook.raw_maps, rtol=1e-6)
    with pytest.raises(ValueError, match=r"'encoder9' is not a module.*features, pre_logits"):
        gradcam.classification_cam(model, variables, images, layer="encoder9")
    with pytest.raises(ValueError, match=r"'head' outputs \(3, 3\), not one \(B, h, w, C\)"):
        gradcam.classification_cam(model, variables, images, layer="head")
    with pytest.raises(ValueError, match="method must be one of"):
        gradcam.classification_cam(model, variables, images, method="cam")


# A blob's position sets the class: quadrant 0 1 / 2 3 of a 32x32 image.
SIZE, BLOB = 32, 6
TRAIN_STEPS, TRAIN_BATCH = 100, 32


class QuadrantNet(nn.Module):
    """A small CNN that can tell where a blob is: besides the image, its input carries the image
    times each pixel's coordinates (bright pixels say where they are; the dark background says
    nothing), so its features fire on the blob only, with a position-dependent gain."""

    @nn.compact
    def __call__(self, images, *, train: bool):
        rows, columns = jnp.meshgrid(jnp.linspace(-1, 1, images.shape[1]),
                                     jnp.linspace(-1, 1, images.shape[2]), indexing="ij")
        x = jnp.concatenate([images, images * rows[..., None], images * columns[..., None]], axis=-1)
        x = nn.max_pool(nn.relu(nn.Conv(8, (3, 3), name="conv0")(x)), (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(16, (3, 3), name="conv1")(x))
        x = Identity(name="pre_logits")(x)
        return nn.Dense(4, name="head")(jnp.mean(x, axis=(1, 2)))


def blob_images(count: int, seed: int):
    """Noisy images with one bright BLOB x BLOB square inside a random quadrant (the class), and
    each square's box (y0, x0, y1, x1)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, count)
    tops = (labels // 2) * (SIZE // 2) + rng.integers(0, SIZE // 2 - BLOB + 1, count)
    lefts = (labels % 2) * (SIZE // 2) + rng.integers(0, SIZE // 2 - BLOB + 1, count)
    images = rng.normal(0.0, 0.3, (count, SIZE, SIZE, 1)).astype(np.float32)
    for image, top, left in zip(images, tops, lefts):
        image[top:top + BLOB, left:left + BLOB] += 1.5
    return images, labels, np.stack([tops, lefts, tops + BLOB, lefts + BLOB], axis=1)


def train_quadrant_net(seed: int) -> dict:
    model = QuadrantNet()
    images, labels, _ = blob_images(TRAIN_STEPS * TRAIN_BATCH, seed=100 + seed)
    params = model.init(jax.random.key(seed), images[:1], train=False)["params"]
    tx = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss(params):
            logits = model.apply({"params": params}, x, train=False)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    for start in range(0, len(images), TRAIN_BATCH):
        params, opt_state = step(params, opt_state, images[start:start + TRAIN_BATCH],
                                 labels[start:start + TRAIN_BATCH])
    return {"params": params}


@pytest.fixture(scope="module")
def quadrant_maps():
    """Grad-CAM of the true class on 100 held-out images: two trained runs (seeds 0, 1) and a
    randomly initialised network, with the images' boxes and the trained run's accuracy."""
    model = QuadrantNet()
    images, labels, boxes = blob_images(100, seed=7)
    explanations = {
        "trained": gradcam.classification_cam(model, train_quadrant_net(0), images, jnp.asarray(labels)),
        "trained_again": gradcam.classification_cam(model, train_quadrant_net(1), images, jnp.asarray(labels)),
        "random": gradcam.classification_cam(model, model.init(jax.random.key(10), images[:1], train=False),
                                             images, jnp.asarray(labels)),
    }
    accuracy = float(np.mean(np.argmax(explanations["trained"].outputs, axis=-1) == labels))
    return explanations, boxes, accuracy


def test_trained_cnn_map_peaks_inside_the_blob(quadrant_maps):
    explanations, boxes, accuracy = quadrant_maps
    assert accuracy >= 0.95
    heatmaps = np.asarray(explanations["trained"].heatmaps)
    peak_rows, peak_columns = np.unravel_index(heatmaps.reshape(len(heatmaps), -1).argmax(axis=1), (SIZE, SIZE))
    inside = ((peak_rows >= boxes[:, 0]) & (peak_rows < boxes[:, 2])
              & (peak_columns >= boxes[:, 1]) & (peak_columns < boxes[:, 3]))
    assert inside.mean() >= 0.9, inside.mean()


def mean_rank_correlation(maps_a, maps_b) -> float:
    """Mean over images of the Spearman correlation of two maps (0 where one is constant)."""
    correlations = [stats.spearmanr(a.ravel(), b.ravel()).statistic if a.std() > 0 and b.std() > 0 else 0.0
                    for a, b in zip(np.asarray(maps_a), np.asarray(maps_b))]
    return float(np.mean(correlations))


def test_maps_depend_on_the_learned_weights(quadrant_maps):
    """Adebayo et al. 2018's model-randomisation test: two independently trained runs agree,
    while a randomly initialised network's maps are unrelated to the trained one's (measured:
    about 0.8 against 0.1)."""
    explanations, _, _ = quadrant_maps
    between_runs = mean_rank_correlation(explanations["trained"].raw_maps, explanations["trained_again"].raw_maps)
    against_random = mean_rank_correlation(explanations["trained"].raw_maps, explanations["random"].raw_maps)
    assert between_runs >= 0.6, between_runs
    assert against_random <= 0.3, against_random
    assert between_runs - against_random >= 0.4


def he_variables(model, images) -> dict:
    """Variables for `model` without compiling its initialiser (the slow part of a tiny model's
    test): He-normal kernels, unit scales and variances, zero biases and means."""
    rng = np.random.default_rng(3)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape).astype(leaf.dtype)
        return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, leaf.dtype)

    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def tiny_unet():
    """A width-4, depth-2 U-Net as train.build_model builds it (oneDNN convolutions), 2 images of
    30x30 (the U-Net pads them to 32x32)."""
    model = onednn_conv.with_conv(models.get_model("unet", features=4, depth=2), "onednn")
    images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 30, 30, 1)), jnp.float32)
    return model, he_variables(model, images), images


def test_seg_gradcam_at_pre_logits_is_the_logit_map(tiny_unet):
    """Before the U-Net's 1x1 head, dS/dA_ijk = region_ij w_k, so the Grad-CAM weights are
    (|region| / hw) w_k and the map is (|region| / hw) ReLU(logits - bias), whatever the region.
    The map of the padded 32x32 input is cropped, not resized, to the image's 30x30."""
    model, variables, images = tiny_unet
    logits = np.asarray(model.apply(variables, images, train=False))[..., 0]
    logit_map = np.maximum(logits - float(variables["params"]["head"]["bias"][0]), 0)
    box = gradcam.box_region([[4, 4, 12, 20]] * 2, (30, 30))
    explanation = gradcam.segmentation_cam(model, variables, images, box)
    assert explanation.raw_maps.shape == (2, 32, 32) and explanation.heatmaps.shape == (2, 30, 30)
    np.testing.assert_allclose(explanation.raw_maps[:, :30, :30], 8 * 16 / 32 ** 2 * logit_map,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(explanation.heatmaps, logit_map / logit_map.max(axis=(1, 2), keepdims=True),
                               rtol=1e-4, atol=1e-6)
    # The last decoder block's output feeds the pre_logits hook unchanged.
    at_decoder = gradcam.segmentation_cam(model, variables, images, box, layer="decoder0", method="gradcam_pp")
    at_hook = gradcam.segmentation_cam(model, variables, images, box, method="gradcam_pp")
    np.testing.assert_allclose(at_decoder.raw_maps, at_hook.raw_maps, rtol=1e-5, atol=1e-7)


def test_seg_gradcam_regions_at_the_bottleneck(tiny_unet):
    model, variables, images = tiny_unet
    logits = model.apply(variables, images, train=False)
    predicted_mask = (jax.nn.sigmoid(logits[..., 0]) >= 0.5).astype(jnp.float32)
    assert 0 < float(predicted_mask.mean()) < 1

    def explain(region):
        return gradcam.segmentation_cam(model, variables, images, region, layer="bottleneck")

    predicted = explain(None)
    np.testing.assert_allclose(predicted.raw_maps, explain(predicted_mask).raw_maps, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(predicted.outputs, logits, rtol=1e-5, atol=1e-6)
    top_left = explain(gradcam.box_region([[0, 0, 12, 12]] * 2, (30, 30)))
    outside = explain(gradcam.box_region([[40, 0, 50, 8]] * 2, (30, 30)))
    for explanation in (predicted, top_left):
        assert explanation.raw_maps.shape == (2, 8, 8) and explanation.heatmaps.shape == (2, 30, 30)
        assert float(explanation.heatmaps.min()) >= 0
        np.testing.assert_allclose(explanation.heatmaps.max(axis=(1, 2)), 1.0, rtol=1e-6)
    assert np.abs(top_left.heatmaps - predicted.heatmaps).max() > 0.1
    assert not np.any(outside.heatmaps) and not np.any(outside.raw_maps)


def test_box_region_and_pointing_game():
    region = np.asarray(gradcam.box_region([[1, 2, 3, 5], [-4, -4, 0, 9]], (4, 6)))
    np.testing.assert_array_equal(region[0], [[0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0],
                                              [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]])
    assert not region[1].any()
    heatmaps = np.zeros((3, 4, 6))
    heatmaps[0, 1, 2], heatmaps[0, 0, 0] = 1.0, 0.5   # 1 of 1.5 inside
    heatmaps[1] = 1.0                                 # region empty: not scored
    regions = region[[0, 1, 0]].astype(bool)          # image 2: all-zero map, not scored
    per_image, summary = gradcam.pointing_game(heatmaps, regions)
    assert per_image[0] == {"energy_inside": pytest.approx(2 / 3), "region_fraction": 0.25}
    assert per_image[1]["energy_inside"] is None and per_image[2]["energy_inside"] is None
    assert summary == {"num_images_with_region": 2, "num_images_scored": 1,
                       "mean_energy_inside": pytest.approx(2 / 3), "mean_region_fraction": 0.25}


def test_jet_colours_and_mask_outline():
    colours = viz.colour_map(np.array([[0.0, 0.5, 1.0, 2.0]]))
    assert colours[0].tolist() == [[0, 0, 128], [128, 255, 128], [128, 0, 0], [128, 0, 0]]
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    ring = mask.copy()
    ring[2, 2] = False
    np.testing.assert_array_equal(viz.mask_outline(mask), ring)
    assert viz.contact_sheet([np.zeros((2, 3, 3), np.uint8)] * 3, columns=2, gap=1).shape == (5, 7, 3)


@pytest.mark.parametrize("name", models.available())
def test_every_registered_model_explains_at_pre_logits(name):
    model = onednn_conv.with_conv(models.get_model(name, num_classes=2, **TINY.get(name, {})), "onednn")
    task = models.info(name).task
    size = 64 if task == "classification" else 32  # octnet and dr_net need 64x64
    images = jnp.asarray(np.random.default_rng(2).normal(size=(2, size, size, 1)), jnp.float32)
    variables = he_variables(model, images)
    if task == "classification":
        explanation = gradcam.classification_cam(model, variables, images)
    else:
        explanation = gradcam.segmentation_cam(model, variables, images,
                                               gradcam.box_region([[0, 0, 16, 16]] * 2, (size, size)))
    heatmaps = np.asarray(explanation.heatmaps)
    assert heatmaps.shape == (2, size, size)
    assert np.all(np.isfinite(heatmaps)) and heatmaps.min() >= 0
    np.testing.assert_allclose(heatmaps.max(axis=(1, 2)), 1.0, rtol=1e-5)  # not all-zero maps
    assert np.all(np.isfinite(explanation.raw_maps))


def read_summary(out_dir: Path, num_images: int) -> dict:
    summary = json.loads((out_dir / "summary.json").read_text())
    assert len(summary["images"]) == num_images
    for row in summary["images"]:
        assert (out_dir / row["file"]).stat().st_size > 0
    assert (out_dir / "contact_sheet.png").stat().st_size > 0
    return summary


def save_initial_state(config, workdir: Path) -> train.Experiment:
    """The config's experiment, its initial state saved as the workdir's only checkpoint (step 0):
    what --mode=gradcam restores, without the cost of training."""
    experiment = train.Experiment(config)
    manager = checkpoint.create_manager(workdir / "checkpoints", best_metric=config.checkpoint.best_metric)
    checkpoint.save(manager, 0, experiment.initial_state, {**experiment.run_info, "train_seconds": 0.0},
                    {config.checkpoint.best_metric: 0.0})
    return experiment


def test_gradcam_mode_explains_a_segmentation_checkpoint(smoke_config, tmp_path):
    smoke_config.gradcam.num_images = 3
    smoke_config.gradcam.seg_region = "ground_truth"
    save_initial_state(smoke_config, tmp_path)
    summary = gradcam.run(smoke_config, str(tmp_path))
    assert summary == read_summary(tmp_path / "gradcam" / "validation", 3)
    assert summary["checkpoint_step"] == 0 and summary["seg_region"] == "ground_truth"
    pointing = summary["pointing_game"]
    assert set(pointing) == {"num_images_with_region", "num_images_scored", "mean_energy_inside",
                             "mean_region_fraction"}
    assert pointing["num_images_with_region"] == 3 and 0 < pointing["mean_region_fraction"] < 1
    assert all(0 <= row["region_fraction"] < 1 for row in summary["images"])


def test_gradcam_mode_finds_the_masks_behind_mask_derived_labels(tfds_dir, duke_builder, tmp_path):
    """Duke fluid classification (label = the B-scan has fluid): the pointing game scores the
    maps against the fluid masks the labels came from; the checkpoint is the initial state."""
    from configs import duke_fluid
    config = duke_fluid.get_config("smoke")
    config.dataset.data_dir = tfds_dir
    config.gradcam.num_images = 3
    config.gradcam.target_class = 1
    experiment = save_initial_state(config, tmp_path)
    summary = gradcam.run(config, str(tmp_path))
    read_summary(tmp_path / "gradcam" / "validation", 3)
    assert [row["true_class"] for row in summary["images"]] == ["fluid"] * 3
    assert all(row["explained_class"] == "fluid" and 0 < row["region_fraction"] < 0.2
               for row in summary["images"])
    assert summary["pointing_game"]["num_images_with_region"] == 3
    sheet = gradcam.evaluation_images(experiment, experiment.initial_state, gradcam.preview_examples(experiment))
    assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[-1] == 3
    config.gradcam.target_class = 2
    with pytest.raises(ValueError, match="target_class=2, but the model has 2 output"):
        gradcam.run(config, str(tmp_path))


@pytest.mark.slow
def test_main_gradcam_mode(smoke_config, tfds_dir, tmp_path):
    save_initial_state(smoke_config, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "retina_jax.main", "--config=configs/vessels.py:smoke", f"--workdir={tmp_path}",
         f"--config.dataset.data_dir={tfds_dir}", "--mode=gradcam", "--config.gradcam.num_images=5",
         "--config.gradcam.method=gradcam_pp", "--config.gradcam.layer=decoder1"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(tmp_path / "gradcam" / "validation", 5)
    assert (summary["method"], summary["layer"]) == ("gradcam_pp", "decoder1")
    assert "mean_energy_inside" in summary["pointing_game"]


def test_training_logs_gradcam_sheets_to_tensorboard_when_asked(smoke_config, tmp_path):
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    smoke_config.gradcam.tensorboard = True
    smoke_config.gradcam.num_images = 2
    train.train_and_evaluate(smoke_config, tmp_path)
    logged = {}
    for event_file in tmp_path.glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(event_file)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                logged.setdefault(value.tag, set()).add(event.step)
    assert logged["validation/gradcam"] == {2, 4}  # every evaluation of the 4-step smoke run
