"""The image/mask folder readers: `duke_dme` (shipped subjects 1-5) and the generic `image_folder`."""
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from retina_jax import datasets
from retina_jax.data import pipeline
from retina_jax.datasets import image_pairs
from retina_jax.datasets.duke_dme import duke_dme_dataset_builder as duke
from retina_jax.datasets.image_folder import image_folder_dataset_builder as image_folder

DUKE_DUMMY = duke.DEFAULT_MANUAL_DIR.parent / "dummy_data"


def save_png(path, pixels) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, np.uint8)).save(path)


def test_shipped_duke_splits_by_subject(duke_builder):
    splits = {name: split.num_examples for name, split in duke_builder.info.splits.items()}
    assert splits == {"train": 44, "validation": 11}  # subjects 6-10 are held out
    for split, subjects in (("train", {1, 2, 3, 4}), ("validation", {5})):
        examples = tfds.as_numpy(duke_builder.as_dataset(split=split, batch_size=-1))
        assert set(examples["subject"].tolist()) == subjects
        numbers = [int(name.decode().removeprefix("img_")) for name in examples["id"]]
        assert [number // 11 + 1 for number in numbers] == examples["subject"].tolist()
        assert examples["image"].shape[1:] == (496, 768, 1)
        assert set(np.unique(examples["mask"])) == {0, 1}


def test_shipped_duke_fluid_matches_the_source_counts(duke_builder):
    """Fluid pixels per B-scan equal metadata.csv's counts in the shared copy (img_44..img_54)."""
    examples = tfds.as_numpy(duke_builder.as_dataset(split="validation", batch_size=-1))
    fluid = {name.decode(): int(mask.sum()) for name, mask in zip(examples["id"], examples["mask"])}
    assert fluid["img_44"] == 464 and fluid["img_49"] == 17283 and fluid["img_54"] == 0
    assert sum(fluid.values()) == 88941


def test_missing_test_split_is_a_clear_error(duke_builder, smoke_config):
    with pytest.raises(ValueError, match=r"duke_dme has no split 'test'; it has \['train', 'validation'\]"):
        pipeline.eval_dataset(duke_builder, "test", smoke_config, local_batch_size=2)


def test_test_split_appears_with_subjects_6_to_10(tmp_path):
    builder = datasets.get_builder("duke_dme", data_dir=str(tmp_path / "tfds"), manual_dir=str(DUKE_DUMMY))
    test = tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1))
    assert sorted(test["id"].tolist()) == [b"img_109", b"img_55"]
    assert sorted(test["subject"].tolist()) == [6, 10]
    assert sorted(test["bscan_index"].tolist()) == [10, 50]


def test_rgb_region_id_masks_read_as_binary():
    mask = image_pairs.read_mask(DUKE_DUMMY / "masks" / "img_11.png", (496, 768), label_map=True)
    image = image_pairs.read_image(DUKE_DUMMY / "images" / "img_11.png", channels=1)
    assert mask.shape == (496, 768, 1) and set(np.unique(mask)) == {0, 1}
    assert image.shape == (496, 768, 1)
    assert 0 < mask.sum() < mask.size


def copy_dummy(tmp_path):
    manual_dir = tmp_path / "raw"
    shutil.copytree(DUKE_DUMMY, manual_dir)
    return manual_dir


@pytest.mark.parametrize("breakage, message", [
    (lambda d: (d / "masks" / "img_44.png").unlink(), r"images without a mask \['img_44'\]"),
    (lambda d: (d / "images" / "img_0.png").write_bytes(b"not a png"), r"img_0.png is not a readable image"),
    (lambda d: save_png(d / "images" / "img_0.png", np.zeros((100, 768))), r"img_0.png is 768x100"),
    (lambda d: save_png(d / "masks" / "img_0.png", np.zeros((496, 700))), r"Mask .*img_0.png is 700x496"),
    (lambda d: [shutil.move(d / folder / "img_0.png", d / folder / "scan_0.png")
                for folder in ("images", "masks")], r"scan_0.png: expected files named img_N.png"),
    (lambda d: [path.unlink() for path in (d / "images").glob("img_44.png")] +
     [path.unlink() for path in (d / "masks").glob("img_44.png")], r"no B-scan of subject\(s\) \(5,\)"),
    (lambda d: shutil.rmtree(d / "masks"), r"No masks/ folder"),
    (lambda d: save_png(d / "images" / "img_0.png", np.stack([np.zeros((496, 768)), np.ones((496, 768)),
                                                             np.zeros((496, 768))], -1)),
     r"img_0.png has 3 colour channel\(s\) with different values; expected 1"),
])
def test_bad_duke_data_names_the_file(tmp_path, breakage, message):
    manual_dir = copy_dummy(tmp_path)
    breakage(manual_dir)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        datasets.get_builder("duke_dme", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual_dir))
    assert not list((tmp_path / "tfds").glob("duke_dme-*/duke_dme/1.0.0/*.tfrecord*"))


def make_pairs(folder, stems, shape=(24, 32), channels=1, with_masks=True):
    rng = np.random.default_rng(0)
    for stem in stems:
        image = rng.integers(0, 256, (*shape, channels) if channels == 3 else shape)
        save_png(folder / "images" / f"{stem}.png", image)
        if with_masks:
            save_png(folder / "masks" / f"{stem}.png", (rng.random(shape) > 0.8) * 255)


def test_image_folder_pooled_layout_splits_by_name_hash(tmp_path):
    stems = [f"case{index:02d}" for index in range(20)]
    make_pairs(tmp_path / "raw", stems)
    builder = datasets.get_builder("image_folder", data_dir=str(tmp_path / "tfds"),
                                   manual_dir=str(tmp_path / "raw"))
    assert builder.info.full_name == "image_folder/24x32x1/1.0.0"
    validation = sorted(tfds.as_numpy(builder.as_dataset(split="validation", batch_size=-1))["id"].tolist())
    expected = [stem.encode() for stem in stems if image_folder.is_validation(stem)]
    assert validation == expected and 0 < len(expected) < 20
    assert builder.info.splits["train"].num_examples == 20 - len(expected)


def test_image_folder_explicit_splits_and_unlabelled_test(tmp_path):
    make_pairs(tmp_path / "raw" / "train", ["a", "b", "c"], channels=3)
    make_pairs(tmp_path / "raw" / "validation", ["d"], channels=3)
    make_pairs(tmp_path / "raw" / "test", ["e", "f"], channels=3, with_masks=False)
    builder = datasets.get_builder("image_folder", data_dir=str(tmp_path / "tfds"),
                                   manual_dir=str(tmp_path / "raw"))
    assert builder.info.features["image"].shape == (24, 32, 3)
    assert {name: split.num_examples for name, split in builder.info.splits.items()} == {
        "train": 3, "validation": 1, "test": 2}
    test = tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1))
    assert not test["labelled"].any() and not test["mask"].any()
    train = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1))
    assert train["labelled"].all() and set(np.unique(train["mask"])) == {0, 1}


@pytest.mark.parametrize("breakage, message", [
    (lambda d: save_png(d / "images" / "b.png", np.zeros((30, 32))), r"b.png is 32x30 .* this dataset's images are 32x24"),
    (lambda d: (d / "masks" / "c.png").unlink(), r"images without a mask \['c'\]"),
    (lambda d: save_png(d / "masks" / "z.png", np.zeros((24, 32))), r"masks without an image \['z'\]"),
    (lambda d: shutil.rmtree(d / "masks"), r"needs masks/ beside it"),
    (lambda d: [path.unlink() for path in (d / "images").iterdir()], r"holds no image files"),
    (lambda d: save_png(d / "images" / "a.jpg", np.zeros((24, 32))), r"two images named 'a'"),
])
def test_bad_image_folder_names_the_problem(tmp_path, breakage, message):
    raw = tmp_path / "raw"
    make_pairs(raw, ["a", "b", "c"])
    breakage(raw)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        datasets.get_builder("image_folder", data_dir=str(tmp_path / "tfds"), manual_dir=str(raw))


def test_image_folder_needs_a_manual_dir(tmp_path):
    with pytest.raises(ValueError, match="no built-in data: pass --config.dataset.manual_dir"):
        datasets.get_builder("image_folder", data_dir=str(tmp_path))
