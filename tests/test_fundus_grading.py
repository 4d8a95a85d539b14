"""Graham's fundus grading preprocessing, step by step on synthetic images with hand-computed
answers, and the `idrid_grading` builder on the real data in ../shared/data."""
import collections

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import shared_data_builder
from PIL import Image, ImageDraw

from retina_jax.data import fundus_grading


def constant(height: int, width: int, rgb=(200, 100, 50)) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (height, width, 3)).copy()


def synthetic_fundus(width: int, height: int, lesion: bool = True) -> np.ndarray:
    """An orange retina (diameter 0.8 x width) on black, clipped at top and bottom as in IDRiD,
    with a small dark "haemorrhage" (radius 0.05 x the retina's) left of the centre."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    radius, cx, cy = 0.4 * width, width / 2, height / 2
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(180, 90, 40))
    if lesion:
        spot = 0.05 * radius
        draw.ellipse((cx - 0.3 * radius - spot, cy - spot, cx - 0.3 * radius + spot, cy + spot),
                     fill=(90, 30, 20))
    return np.asarray(image)


def test_crop_to_retina_is_the_bounding_box_of_pixels_above_the_threshold():
    image = np.zeros((6, 8, 3), np.uint8)
    image[1:4, 2:5] = 200
    image[4, 6, 2] = 31  # only the blue channel is bright: still retina
    image[5, 0] = 30     # at the threshold: background
    cropped = fundus_grading.crop_to_retina(image, threshold=30)
    np.testing.assert_array_equal(cropped, image[1:5, 2:7])


def test_crop_to_retina_of_a_black_image_says_so():
    with pytest.raises(ValueError, match="black, not a fundus photograph"):
        fundus_grading.crop_to_retina(np.full((4, 4, 3), 12, np.uint8))


@pytest.mark.parametrize("shape, radius, expected", [
    ((10, 20), 5, (5, 10)),    # clipped at top and bottom: the width is the diameter
    ((20, 10), 5, (10, 5)),    # clipped at the sides: the height is
    ((30, 30), 40, (80, 80)),  # enlarged
])
def test_scale_to_radius_makes_the_larger_side_the_diameter(shape, radius, expected):
    scaled = fundus_grading.scale_to_radius(constant(*shape), radius)
    assert scaled.shape == (*expected, 3) and scaled.dtype == np.uint8
    assert (scaled == (200, 100, 50)).all()


def test_subtract_local_average_maps_flat_regions_and_ramps_to_grey():
    np.testing.assert_array_equal(fundus_grading.subtract_local_average(constant(20, 30), 2.0), 128)
    ramp = np.broadcast_to(np.arange(0, 240, 4, dtype=np.uint8)[None, :, None], (40, 60, 3)).copy()
    # A symmetric blur leaves a linear ramp as it is (away from the image's ends).
    interior = fundus_grading.subtract_local_average(ramp, 2.0)[:, 10:-10]
    assert np.abs(interior.astype(int) - 128).max() <= 4  # 4 x the blur's rounding to uint8


def test_subtract_local_average_amplifies_detail_four_times_and_clips():
    image = constant(41, 41, (100, 100, 100))
    image[20, 20] = 110  # a faint dot: 4 x (110 - its blurred value, ~100) + 128 ~ 168
    image[5, 5] = 255    # a bright dot: 4 x ~155 + 128 clips to 255
    contrasted = fundus_grading.subtract_local_average(image, 3.0)
    assert 160 <= contrasted[20, 20, 0] <= 168
    assert (contrasted[5, 5] == 255).all()
    # Far from both dots the image is flat: 128.
    assert (contrasted[30:, 30:] == 128).all()


def test_remove_rim_greys_the_pixels_beyond_the_radius():
    image = constant(5, 5)
    rimless = fundus_grading.remove_rim(image, radius=2.0)
    # Centre (2, 2); kept: squared distance <= 4 — the 13 pixels of a diamond with its tips.
    kept = np.array([[0, 0, 1, 0, 0],
                     [0, 1, 1, 1, 0],
                     [1, 1, 1, 1, 1],
                     [0, 1, 1, 1, 0],
                     [0, 0, 1, 0, 0]], bool)
    np.testing.assert_array_equal(rimless[kept], image[kept])
    assert (rimless[~kept] == 128).all()


def test_to_square_pads_with_grey_and_crops_about_the_centre():
    wide = constant(1, 4)
    square = fundus_grading.to_square(wide, 4)
    assert square.shape == (4, 4, 3)
    assert (square[1] == (200, 100, 50)).all()  # 3 rows of padding: 1 above, 2 below
    assert (square[[0, 2, 3]] == 128).all()
    tall = np.arange(5 * 3 * 3, dtype=np.uint8).reshape(5, 3, 3)
    np.testing.assert_array_equal(fundus_grading.to_square(tall, 3), tall[1:4])


def test_grading_preprocess_centres_a_grey_retina_and_keeps_the_lesion():
    processed = fundus_grading.grading_preprocess(synthetic_fundus(400, 300), size=128)
    assert processed.shape == (128, 128, 3) and processed.dtype == np.uint8
    rows, cols = np.ogrid[:128, :128]
    distance = np.hypot(rows - 63.5, cols - 63.5)
    # Outside 0.9 x the radius (64 px): grey; the flat retina away from the lesion: ~grey.
    assert (processed[distance > 0.9 * 64] == 128).all()
    lesion_col = round(63.5 - 0.3 * 64)
    far_from_lesion = (distance < 0.8 * 64) & (np.hypot(rows - 63.5, cols - lesion_col) > 12)
    assert np.abs(processed[far_from_lesion].astype(int) - 128).max() <= 6
    # The haemorrhage (radius 3.2 px, about the blur's sigma 2.1 px) stays darker than grey.
    assert (processed[63:65, lesion_col].astype(int) < 128 - 20).all()


def test_grading_preprocess_is_nearly_independent_of_the_photographs_resolution():
    small = fundus_grading.grading_preprocess(synthetic_fundus(400, 300))
    large = fundus_grading.grading_preprocess(synthetic_fundus(1600, 1200))
    assert np.abs(small.astype(int) - large.astype(int)).mean() < 1.0


def test_grading_preprocess_of_a_black_image_raises():
    with pytest.raises(ValueError, match="black"):
        fundus_grading.grading_preprocess(np.zeros((30, 40, 3), np.uint8))


@pytest.fixture(scope="module")
def idrid_builder(tfds_dir):
    """IDRiD's 413 official training images from ../shared/data/idrid_grading (~1 min to prepare)."""
    return shared_data_builder("idrid_grading", tfds_dir)


def test_idrid_real_splits_are_stratified_by_grade(idrid_builder):
    sizes = {name: info.num_examples for name, info in idrid_builder.info.splits.items()}
    assert sizes == {"train": 330, "validation": 83}  # no test split in the shared copy
    grades = {split: collections.Counter(tfds.as_numpy(
        idrid_builder.as_dataset(split=split, batch_size=-1))["label"].tolist()) for split in sizes}
    total = grades["train"] + grades["validation"]
    assert [total[grade] for grade in range(5)] == [134, 20, 136, 74, 49]
    for grade in range(5):
        assert abs(grades["validation"][grade] - 0.2 * total[grade]) <= 0.5


def test_idrid_real_examples_are_preprocessed_and_keyed_by_split(idrid_builder):
    example = next(iter(tfds.as_numpy(idrid_builder.as_dataset(split="validation").take(1))))
    assert example["image"].shape == (512, 512, 3) and example["image"].dtype == np.uint8
    assert example["id"].decode().startswith("train/IDRiD_")
    assert (example["image"][:8, :8] == 128).all()  # the corner: outside the retina, grey
    assert 0 <= example["dme_risk"] <= 2
