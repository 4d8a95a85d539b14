"""Tests of the dataset registry and the `retina_vessels` builder on the shipped and bad data."""
import shutil
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from retina_jax import datasets
from retina_jax.datasets import validate
from retina_jax.datasets.retina_vessels import retina_vessels_dataset_builder as rv

REAL_SPLIT_SIZES = {"train": 537, "validation": 173, "test": 174}
DUMMY_ZIP = rv.DEFAULT_MANUAL_DIR.parent / "dummy_data" / rv.ZIP_NAME


@pytest.fixture(scope="module")
def real_builder(vessel_builder):
    return vessel_builder


@pytest.fixture(scope="module")
def real_splits(real_builder):
    """split -> whole split as one batch of numpy arrays."""
    return {split: tfds.as_numpy(real_builder.as_dataset(split=split, batch_size=-1))
            for split in REAL_SPLIT_SIZES}


def small_arrays() -> dict[str, np.ndarray]:
    """A valid file's arrays in the real dtypes: 2 patches per split."""
    rng = np.random.default_rng(0)
    arrays = {}
    for images_key, masks_key in rv.SPLIT_KEYS.values():
        arrays[images_key] = rng.integers(0, 256, (2, 64, 64)).astype(np.uint32)
        if masks_key:
            arrays[masks_key] = rng.integers(0, 2, (2, 64, 64)).astype(np.float64)
    return arrays


def write_npz(folder, arrays) -> None:
    np.savez(folder / rv.NPZ_NAME, **arrays)


def test_real_split_sizes(real_builder, real_splits):
    for split, size in REAL_SPLIT_SIZES.items():
        assert real_builder.info.splits[split].num_examples == size
        assert len(real_splits[split]["id"]) == size


def test_real_ids_name_split_and_index(real_splits):
    for split, size in REAL_SPLIT_SIZES.items():
        ids = sorted(real_splits[split]["id"].tolist())
        assert ids == [f"{split}_{index:04d}".encode() for index in range(size)]


def test_real_images_and_masks_are_uint8_patches(real_splits):
    for split, examples in real_splits.items():
        for feature in ("image", "mask"):
            assert examples[feature].shape[1:] == (64, 64, 1), (split, feature)
            assert examples[feature].dtype == np.uint8, (split, feature)
        assert set(np.unique(examples["mask"])) <= {0, 1}, split


def test_real_labelled_splits_have_vessels_and_test_has_none(real_splits):
    assert real_splits["train"]["mask"].any()
    assert real_splits["train"]["labelled"].all()
    assert real_splits["validation"]["labelled"].all()
    assert not real_splits["test"]["labelled"].any()
    assert not real_splits["test"]["mask"].any()


def test_real_examples_match_source_arrays(real_splits):
    arrays = rv.load_arrays(rv.DEFAULT_MANUAL_DIR)
    validation = real_splits["validation"]
    order = np.argsort(validation["id"])
    np.testing.assert_array_equal(validation["image"][order, ..., 0], arrays["x_val"])
    np.testing.assert_array_equal(validation["mask"][order, ..., 0], arrays["y_val"])


def test_loads_unzipped_npz(tmp_path):
    write_npz(tmp_path, small_arrays())
    arrays = rv.load_arrays(tmp_path)
    assert sorted(arrays) == sorted(rv.required_keys())
    assert all(array.dtype == np.uint8 for array in arrays.values())


def test_missing_file_names_both_filenames_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="retinal_vessel_dataset") as error:
        rv.load_arrays(tmp_path)
    message = str(error.value)
    assert rv.ZIP_NAME in message and rv.NPZ_NAME in message and str(tmp_path) in message


def test_zip_without_npz_member_names_member(tmp_path):
    with zipfile.ZipFile(tmp_path / rv.ZIP_NAME, "w") as archive:
        archive.writestr("other.npz", b"")
    with pytest.raises(ValueError, match=rv.NPZ_NAME):
        rv.load_arrays(tmp_path)


def test_corrupt_zip_is_named(tmp_path):
    (tmp_path / rv.ZIP_NAME).write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match=f"{rv.ZIP_NAME} is not a readable zip"):
        rv.load_arrays(tmp_path)


def test_corrupt_npz_is_named(tmp_path):
    (tmp_path / rv.NPZ_NAME).write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=f"{rv.NPZ_NAME} is not a readable .npz"):
        rv.load_arrays(tmp_path)


def test_missing_key_is_named(tmp_path):
    arrays = small_arrays()
    del arrays["y_val"]
    write_npz(tmp_path, arrays)
    with pytest.raises(ValueError, match="y_val"):
        rv.load_arrays(tmp_path)


def test_non_binary_mask_names_key(tmp_path):
    arrays = small_arrays()
    arrays["y_train"][0, 0, 0] = 2
    write_npz(tmp_path, arrays)
    with pytest.raises(ValueError, match="y_train"):
        rv.load_arrays(tmp_path)


def test_grey_value_out_of_range_names_key():
    arrays = small_arrays()
    arrays["x_test"][1, 5, 5] = 256
    with pytest.raises(ValueError, match="x_test"):
        rv.validate(arrays, "in-memory")


def test_wrong_image_shape_names_key_and_expected_shape():
    arrays = small_arrays()
    arrays["x_train"] = arrays["x_train"][:, :32, :32]
    with pytest.raises(ValueError, match=r"x_train.*\(N, 64, 64\)"):
        rv.validate(arrays, "in-memory")


def test_mask_count_mismatch_names_key_and_expected_shape():
    arrays = small_arrays()
    arrays["y_val"] = arrays["y_val"][:1]
    with pytest.raises(ValueError, match=r"y_val.*\(2, 64, 64\)"):
        rv.validate(arrays, "in-memory")


def test_unknown_dataset_lists_available():
    with pytest.raises(ValueError, match="retina_vessels"):
        datasets.get_builder("nope")


def test_different_raw_files_get_different_prepared_dirs(tmp_path):
    raw_a, raw_b = tmp_path / "raw_a", tmp_path / "raw_b"
    for raw in (raw_a, raw_b):
        raw.mkdir()
        shutil.copy(DUMMY_ZIP, raw)
    (raw_b / "notes.txt").write_text("an extra file changes the fingerprint")
    data_dir = str(tmp_path / "tfds")

    builder_a = datasets.get_builder("retina_vessels", data_dir=data_dir, manual_dir=str(raw_a))
    builder_b = datasets.get_builder("retina_vessels", data_dir=data_dir, manual_dir=str(raw_b))

    assert builder_a.data_dir != builder_b.data_dir
    assert builder_a.info.splits["train"].num_examples == 3
    assert builder_b.info.splits["train"].num_examples == 3


def test_builders_png_encoding_decodes_to_the_same_pixels_and_checks_the_shape():
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
        "mask": tfds.features.Image(shape=(5, 7, 1), dtype=np.uint8),
        "id": tfds.features.Text()})
    rng = np.random.default_rng(0)
    arrays = {"image": rng.integers(0, 256, (5, 7, 3), dtype=np.uint8),
              "mask": rng.integers(0, 2, (5, 7, 1), dtype=np.uint8) * 255}
    encoded = validate.png_encoded({**arrays, "id": "case_1"}, features)
    assert encoded["id"] == "case_1" and all(isinstance(encoded[key], bytes) for key in arrays)
    decoded = features.decode_example(features.encode_example(encoded))
    for key, pixels in arrays.items():
        np.testing.assert_array_equal(decoded[key].numpy(), pixels)
    with pytest.raises(ValueError, match=r"'mask' expects a uint8 image of shape \(5, 7, 1\).*\(5, 6, 1\)"):
        validate.png_encoded({"mask": arrays["mask"][:, :6]}, features)
    with pytest.raises(ValueError, match="'image'.*float32"):
        validate.png_encoded({"image": arrays["image"].astype(np.float32)}, features)
