"""Bad input wherever a user hands us data (dataset builders, the generic folder dataset,
--mode=predict), the skip-and-report variant, and --mode=predict end to end."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from retina_jax import datasets, predict, train
from retina_jax.data import pipeline
from retina_jax.datasets import validate

REPO = Path(__file__).resolve().parents[1]
DATASETS_DIR = REPO / "retina_jax" / "datasets"
DRIVE_DUMMY = DATASETS_DIR / "drive" / "dummy_data"
OCT_DUMMY = DATASETS_DIR / "oct2017" / "dummy_data"
IDRID_DUMMY = DATASETS_DIR / "idrid_grading" / "dummy_data"
FOLDER_SHAPE = (24, 32)  # the generic folder dataset's images: grey, height x width


def save_image(path: Path, pixels, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.asarray(pixels)
    Image.fromarray(pixels if pixels.dtype == np.uint16 else pixels.astype(np.uint8), mode).save(path)


def make_pairs(folder: Path, stems, shape=FOLDER_SHAPE) -> None:
    """Grey images with 0/255 masks under folder/images and folder/masks."""
    rng = np.random.default_rng(0)
    for stem in stems:
        save_image(folder / "images" / f"{stem}.png", rng.integers(0, 256, shape))
        save_image(folder / "masks" / f"{stem}.png", (rng.random(shape) > 0.8) * 255)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def grey_levels(shape) -> np.ndarray:
    """A mask-sized ramp of many grey levels: not binary."""
    return np.tile(np.linspace(0, 255, shape[1]), (shape[0], 1))


def disc(shape) -> np.ndarray:
    """A 0/255 mask of a disc (whose edge JPEG compression blurs into other values)."""
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    return ((rows - shape[0] / 2) ** 2 + (cols - shape[1] / 2) ** 2 < (shape[0] / 3) ** 2) * 255


def colour(shape) -> np.ndarray:
    """An RGB image whose channels differ (not grey)."""
    return np.random.default_rng(1).integers(0, 256, (*shape, 3))


def half_transparent(shape) -> np.ndarray:
    rgba = np.full((*shape, 4), 255)
    rgba[: shape[0] // 2, :, 3] = 0
    return rgba


def as_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def broken_link(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.parent / "moved_away.png")


def deny_reading(path: Path, monkeypatch) -> None:
    """chmod 000; as root (whom permissions do not stop) the PermissionError a user would get is
    raised in its place."""
    path.chmod(0)
    if os.geteuid() == 0:
        original = epath.Path.read_bytes

        def read_bytes(self):
            if os.fspath(self) == os.fspath(path):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return original(self)

        monkeypatch.setattr(epath.Path, "read_bytes", read_bytes)


def drive_shaped(path: Path, pixels_of: Callable) -> None:
    """Replaces the DRIVE file `path` with `pixels_of((584, 565))` in its own format."""
    path.unlink()
    save_image(path, pixels_of((584, 565)))


class Case(NamedTuple):
    where: str          # image_folder | drive | oct2017 | predict | predict_fundus
    corrupt: Callable   # (root, monkeypatch) -> None; root is the folder the user hands in
    error: type
    message: str        # regex: names the file and what was expected


# predict's root holds in/ (the images), fov/ (predict_fundus: their FOV masks) and out/.
CASES = {
    "corrupt image": Case(
        "image_folder", lambda root, _: (root / "images" / "b.png").write_bytes(b"not a png"),
        validate.BadFileError, r"images/b.png is not a readable image"),
    "corrupt image given to predict": Case(
        "predict", lambda root, _: (root / "in" / "b.png").write_bytes(b"not a png"),
        validate.BadFileError, r"in/b.png is not a readable image"),
    "truncated TIFF photograph": Case(
        "drive", lambda root, _: truncate(root / "training" / "images" / "22_training.tif"),
        validate.BadFileError, r"22_training.tif is not a readable image \(no image format recognised "
                               r"in its \d+ bytes: empty, cut short, or not an image\)"),
    "truncated JPEG B-scan": Case(
        "oct2017", lambda root, _: truncate(root / "test" / "DME" / "DME-1083159-1.jpeg"),
        validate.BadFileError, r"DME-1083159-1.jpeg is not a readable image \(image file is truncated"),
    "mask of another size": Case(
        "image_folder", lambda root, _: save_image(root / "masks" / "b.png", np.zeros((30, 32))),
        validate.BadFileError,
        r"Mask \S*masks/b.png is 32x30 \(width x height\) but its image \S*images/b.png is 32x24"),
    "FOV mask of another size": Case(
        "drive", lambda root, _: save_image(root / "training" / "mask" / "22_training_mask.gif",
                                            np.zeros((100, 120))),
        validate.BadFileError,
        r"Mask \S*22_training_mask.gif is 120x100 .* its image \S*22_training.tif is 565x584"),
    "FOV mask of another size given to predict": Case(
        "predict_fundus", lambda root, _: save_image(root / "fov" / "01_test_mask.gif", np.zeros((100, 120))),
        validate.BadFileError, r"Mask \S*fov/01_test_mask.gif is 120x100 .* its image \S*in/01_test.tif is 565x584"),
    "mask that is not binary": Case(
        "image_folder", lambda root, _: save_image(root / "masks" / "c.png", grey_levels(FOLDER_SHAPE)),
        validate.BadFileError,
        r"masks/c.png is not a binary mask: it holds 32 different values \[0, 8, .*expected 0 "
        r"\(background\) and one foreground value, e.g. \{0, 1\} or \{0, 255\}"),
    "mask saved as JPEG": Case(
        "image_folder", lambda root, _: [(root / "masks" / "c.png").unlink(),
                                         save_image(root / "masks" / "c.jpg", disc(FOLDER_SHAPE))],
        validate.BadFileError, r"masks/c.jpg is not a binary mask: it holds \d+ different values"),
    "vessel annotation that is not binary": Case(
        "drive", lambda root, _: drive_shaped(root / "training" / "1st_manual" / "22_manual1.gif",
                                              lambda shape: np.arange(shape[1]) % 3 * 127 + np.zeros(shape)),
        validate.BadFileError, r"22_manual1.gif is not a binary mask: it holds 3 different values"),
    "FOV mask that is not binary, given to predict": Case(
        "predict_fundus", lambda root, _: drive_shaped(root / "fov" / "02_test_mask.gif", grey_levels),
        validate.BadFileError, r"fov/02_test_mask.gif is not a binary mask"),
    "empty image folder": Case(
        "image_folder", lambda root, _: [path.unlink() for path in (root / "images").iterdir()],
        ValueError, r"images holds no image files \(expected .png, .jpg"),
    "empty input folder": Case(
        "predict", lambda root, _: [path.unlink() for path in (root / "in").iterdir()],
        ValueError, r"in holds no image files \(expected .png, .jpg"),
    "missing manual-data folder": Case(
        "drive", lambda root, _: shutil.rmtree(root), FileNotFoundError,
        r"(?s)Raw data folder for dataset 'drive' not found: \S*raw\. .*training/images/NN_training.tif"),
    "missing sub-folder of the manual data": Case(
        "drive", lambda root, _: shutil.rmtree(root / "training" / "images"), FileNotFoundError,
        r"(?s)raw/training/images not found\.\n.*training/1st_manual/NN_manual1.gif"),
    "empty FOV mask": Case(
        "drive", lambda root, _: drive_shaped(root / "training" / "mask" / "22_training_mask.gif", np.zeros),
        validate.BadFileError, r"22_training.tif has an empty field of view: its mask \S*22_training_mask.gif is all 0"),
    "empty FOV mask given to predict": Case(
        "predict_fundus", lambda root, _: drive_shaped(root / "fov" / "01_test_mask.gif", np.zeros),
        validate.BadFileError, r"in/01_test.tif has an empty field of view: its mask \S*fov/01_test_mask.gif is all 0"),
    "missing FOV mask given to predict": Case(
        "predict_fundus", lambda root, _: (root / "fov" / "02_test_mask.gif").unlink(),
        validate.BadFileError, r"in/02_test.tif has no field-of-view mask in the FOV folder: expected "
                               r"02_test.<ext> or 02_test_mask.<ext> or 02_test_fov.<ext>"),
    "missing input folder": Case(
        "predict", lambda root, _: shutil.rmtree(root / "in"), FileNotFoundError,
        r"Input folder \S*/in does not exist"),
    "two inputs with one name": Case(
        "predict", lambda root, _: shutil.copy(root / "in" / "a.png", root / "in" / "a.TIF"),
        ValueError, r"in holds two images named 'a': a.TIF and a.png"),
    "output folder holding other files": Case(
        "predict", lambda root, _: save_image(root / "out" / "holiday.jpg", np.zeros((4, 4))),
        FileExistsError, r"out holds files that are not a previous prediction"),
    "colour image where grey is expected": Case(
        "image_folder", lambda root, _: save_image(root / "images" / "b.png", colour(FOLDER_SHAPE)),
        validate.BadFileError, r"images/b.png has 3 colour channel\(s\) with different values; expected 1"),
    "colour image given to a grey model": Case(
        "predict", lambda root, _: save_image(root / "in" / "b.png", colour((40, 48))),
        validate.BadFileError, r"in/b.png has 3 colour channel\(s\) with different values; expected 1"),
    "transparent pixels": Case(
        "image_folder", lambda root, _: save_image(root / "images" / "b.png", half_transparent(FOLDER_SHAPE)),
        validate.BadFileError, r"images/b.png has transparent pixels \(384 with alpha < 255\); expected an "
                               r"opaque grey or RGB image"),
    "transparent fundus photograph": Case(
        "drive", lambda root, _: drive_shaped(root / "training" / "images" / "22_training.tif", half_transparent),
        validate.BadFileError, r"22_training.tif has transparent pixels"),
    "16-bit image": Case(
        "image_folder", lambda root, _: save_image(root / "images" / "b.png", np.zeros(FOLDER_SHAPE, np.uint16)),
        validate.BadFileError, r"images/b.png is a I(;16)? \(16-bit or float\) image; expected 8-bit grey or RGB"),
    "image too small for the preprocessing": Case(
        "predict_fundus", lambda root, _: [save_image(root / "in" / "03_test.png", colour((5, 5))),
                                           save_image(root / "fov" / "03_test_mask.png", np.ones((5, 5)) * 255)],
        validate.BadFileError, r"in/03_test.png cannot be preprocessed as training images were \(CLAHE with "
                               r"a 8x8 grid needs images of at least 8x8 pixels"),
    "folder named like an image": Case(
        "image_folder", lambda root, _: as_folder(root / "images" / "b.png"),
        validate.BadFileError, r"images/b.png is a folder, not an image file"),
    "broken link": Case(
        "predict", lambda root, _: broken_link(root / "in" / "b.png"),
        validate.BadFileError, r"in/b.png does not exist \(a broken link\?\)"),
    "permission denied": Case(
        "image_folder", lambda root, monkeypatch: deny_reading(root / "images" / "b.png", monkeypatch),
        validate.BadFileError, r"images/b.png cannot be read: permission denied"),
}


def segmentation_config(tfds_dir: str, **predict_settings):
    from configs import vessels
    config = vessels.get_config("smoke")
    config.dataset.data_dir = tfds_dir
    config.predict.update(predict_settings)
    return config


def fundus_config(tfds_dir: str, **predict_settings):
    from configs import drive
    config = drive.get_config("smoke")
    config.dataset.data_dir = tfds_dir
    config.dataset.manual_dir = str(DRIVE_DUMMY)
    config.predict.update(predict_settings)
    return config


def prepare_root(where: str, root: Path) -> None:
    """The good data of `where`, which a case then breaks."""
    if where == "image_folder":
        make_pairs(root, ["a", "b", "c"])
    elif where in ("drive", "oct2017"):
        shutil.copytree(DRIVE_DUMMY if where == "drive" else OCT_DUMMY, root)
    elif where == "predict":
        save_image(root / "in" / "a.png", np.full((40, 48), 90))
        save_image(root / "in" / "b.png", np.full((40, 48), 160))
    else:  # predict_fundus: DRIVE's test photographs and their FOV masks
        shutil.copytree(DRIVE_DUMMY / "test" / "images", root / "in")
        shutil.copytree(DRIVE_DUMMY / "test" / "mask", root / "fov")


def run_user_step(where: str, root: Path, tmp_path: Path, tfds_dir: str) -> None:
    """What the user runs on `root`: a dataset preparation, or --mode=predict (whose workdir
    holds no checkpoint: inputs are checked before the model is needed)."""
    if where in ("image_folder", "drive", "oct2017"):
        datasets.get_builder(where, data_dir=str(tmp_path / "tfds"), manual_dir=str(root))
        return
    make_config = segmentation_config if where == "predict" else fundus_config
    fov = {"fov_dir": str(root / "fov")} if where == "predict_fundus" else {}
    predict.run(make_config(tfds_dir, input_dir=str(root / "in"), output_dir=str(root / "out"), **fov),
                str(tmp_path / "workdir"))


def listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("case", [pytest.param(case, id=name) for name, case in CASES.items()])
def test_bad_input_fails_naming_the_file_and_writes_nothing(case, tmp_path, tfds_dir, vessel_builder,
                                                            drive_dummy_builder, monkeypatch):
    root = tmp_path / "raw"
    prepare_root(case.where, root)
    case.corrupt(root, monkeypatch)
    output_before = listing(root / "out")
    with pytest.raises(case.error, match=case.message):
        run_user_step(case.where, root, tmp_path, tfds_dir)
    # No prepared data that a later call could take for complete, and no partial output.
    assert not list((tmp_path / "tfds").rglob("dataset_info.json"))
    assert not list((tmp_path / "tfds").rglob("*.tfrecord*"))
    assert listing(root / "out") == output_before
    assert not [path.name for path in root.glob(".out.*")]


def test_skip_bad_files_leaves_them_out_and_lists_them(tmp_path):
    raw = tmp_path / "raw"
    make_pairs(raw / "train", ["a", "b", "c", "d"])
    make_pairs(raw / "validation", ["e"])
    (raw / "train" / "images" / "b.png").write_bytes(b"not a png")
    save_image(raw / "train" / "masks" / "c.png", grey_levels(FOLDER_SHAPE))
    with pytest.raises(validate.BadFileError, match=r"train/images/b.png is not a readable image"):
        datasets.get_builder("image_folder", data_dir=str(tmp_path / "tfds"), manual_dir=str(raw))
    for _ in range(2):  # preparing, then reusing the prepared data
        builder = datasets.get_builder("image_folder", data_dir=str(tmp_path / "tfds"), manual_dir=str(raw),
                                       skip_bad_files=True)
        train_ids = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1))["id"].tolist()
        assert sorted(train_ids) == [b"a", b"d"]
        assert builder.info.splits["validation"].num_examples == 1
        report = Path(builder.data_dir).parents[2] / datasets.SKIPPED_REPORT
        rows = list(csv.DictReader(report.open()))
        assert [Path(row["file"]).relative_to(raw).as_posix() for row in rows] == [
            "train/images/b.png", "train/masks/c.png"]
        assert "not a readable image" in rows[0]["reason"] and "not a binary mask" in rows[1]["reason"]


def test_failed_preparation_leaves_nothing_prepared_and_a_retry_succeeds(tmp_path):
    """TFDS writes into an incomplete.* folder and renames it only when every split is written:
    after a failure the same raw-data fingerprint (same file sizes) prepares from scratch."""
    raw = tmp_path / "raw"
    make_pairs(raw, ["a", "b", "c"])
    image = raw / "images" / "b.png"
    good_bytes = image.read_bytes()
    image.write_bytes(bytes(len(good_bytes)))
    with pytest.raises(validate.BadFileError, match=r"images/b.png is not a readable image"):
        datasets.get_builder("image_folder", data_dir=str(tmp_path / "tfds"), manual_dir=str(raw))
    assert not list((tmp_path / "tfds").rglob("dataset_info.json"))
    assert not list((tmp_path / "tfds").rglob("incomplete*"))
    image.write_bytes(good_bytes)
    builder = datasets.get_builder("image_folder", data_dir=str(tmp_path / "tfds"), manual_dir=str(raw))
    assert sum(split.num_examples for split in builder.info.splits.values()) == 3
    assert len(list((tmp_path / "tfds").iterdir())) == 1  # the same prepared folder, now complete


def test_predict_reads_and_preprocesses_fundus_images_as_evaluation_does(tmp_path, tfds_dir, drive_dummy_builder):
    """A DRIVE test photograph given to predict (with its FOV mask file) reaches the model exactly
    as the evaluation pipeline delivers it; without the mask, the estimated FOV is close."""
    config = fundus_config(tfds_dir, fov_dir=str(DRIVE_DUMMY / "test" / "mask"))
    read = predict.input_reader(config, drive_dummy_builder)
    path = epath.Path(DRIVE_DUMMY / "test" / "images" / "01_test.tif")
    example, model_input = predict.load(path, read, config)
    dataset, _ = pipeline.eval_dataset(drive_dummy_builder, "test", config, local_batch_size=1)
    evaluated = next(batch for batch in dataset.as_numpy_iterator() if batch["id"][0] == b"01_test")
    stored = next(example for example in tfds.as_numpy(drive_dummy_builder.as_dataset(split="test"))
                  if example["id"] == b"01_test")
    np.testing.assert_array_equal(example["image"], stored["image"])
    np.testing.assert_array_equal(example["fov"], stored["fov"])
    np.testing.assert_allclose(model_input, evaluated["image"], atol=1e-5)
    config.predict.fov_dir = ""
    estimated = predict.input_reader(config, drive_dummy_builder)(path)["fov"]
    assert np.mean(estimated == stored["fov"]) > 0.99
    black = tmp_path / "black.png"
    save_image(black, np.zeros((584, 565, 3)))
    with pytest.raises(validate.BadFileError, match=r"black.png has an empty field of view: no pixel is "
                                                    r"brighter than 15 \(the estimated FOV\)"):
        predict.input_reader(config, drive_dummy_builder)(epath.Path(black))


def run_main(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "retina_jax.main", *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_predict_segments_a_folder_with_the_training_preprocessing(tmp_path, tfds_dir, vessel_builder):
    """Train the smoke model, then --mode=predict on validation patches (whose probability maps
    evaluation wrote), an image of another size and a corrupt file."""
    config = segmentation_config(tfds_dir)
    config.train.num_steps = config.train.eval_every = 2
    config.eval.tune_threshold = config.eval.save_probabilities = True
    workdir = tmp_path / "workdir"
    train.train_and_evaluate(config, str(workdir))
    validation = tfds.as_numpy(vessel_builder.as_dataset(split="validation", batch_size=-1))
    inputs = tmp_path / "in"
    stems = sorted(name.decode() for name in validation["id"][:2])
    for index in range(2):
        save_image(inputs / f"{validation['id'][index].decode()}.png", validation["image"][index, ..., 0])
    save_image(inputs / "wide.TIF", np.random.default_rng(0).integers(0, 256, (50, 90)))
    (inputs / "zz_corrupt.png").write_bytes(b"\x89PNG not really")
    config.predict.update(input_dir=str(inputs), output_dir=str(tmp_path / "out"))
    with pytest.raises(validate.BadFileError, match=r"in/zz_corrupt.png is not a readable image"):
        predict.run(config, str(workdir))
    assert not (tmp_path / "out").exists()
    done = run_main("--config=configs/vessels.py:smoke", f"--workdir={workdir}", "--mode=predict",
                    f"--config.dataset.data_dir={tfds_dir}", f"--config.predict.input_dir={inputs}",
                    f"--config.predict.output_dir={tmp_path / 'out'}", "--config.predict.skip_bad_files=True")
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "out"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in", "out", "workdir"]  # no temp left
    report = json.loads((out / "report.json").read_text())
    validation_metrics = json.loads((workdir / "eval" / "validation" / "metrics.json").read_text())
    assert report["threshold"] == validation_metrics["validation_threshold"]
    assert (report["num_files"], report["num_predicted"], report["num_skipped"]) == (4, 3, 1)
    skipped = list(csv.DictReader((out / "skipped.csv").open()))
    assert [Path(row["file"]).name for row in skipped] == ["zz_corrupt.png"]
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [row["file"] for row in rows] == [f"{stem}.png" for stem in stems] + ["wide.TIF"]
    for row in rows:
        stem = Path(row["file"]).stem
        source = np.asarray(Image.open(inputs / row["file"]))
        probability = np.asarray(Image.open(out / f"{stem}_probability.png"))
        mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
        assert probability.shape == mask.shape == source.shape
        assert probability.dtype == mask.dtype == np.uint8  # probability x 255
        assert set(np.unique(mask)) <= {0, 255}
        level = 255 * report["threshold"]  # the PNG holds round(255 x probability)
        assert (mask[probability > level + 0.5] == 255).all() and (mask[probability < level - 0.5] == 0).all()
        assert float(row["foreground_fraction"]) == pytest.approx(np.mean(mask == 255), abs=1e-6)
    for stem in stems:  # as evaluation computed them
        evaluated = np.asarray(Image.open(workdir / "eval" / "validation" / "probabilities" / f"{stem}.png"))
        predicted = np.asarray(Image.open(out / f"{stem}_probability.png"))
        assert np.abs(evaluated.astype(int) - predicted).max() <= 1


@pytest.mark.slow
def test_predict_grades_a_folder_with_validation_thresholds(tmp_path, tfds_dir):
    """DR grading (regression head, Graham preprocessing in the builder) on IDRiD's dummy test
    photographs: predict's outputs equal evaluation's on the test split."""
    from configs import dr_grading
    config = dr_grading.get_config("smoke")
    config.dataset.data_dir, config.dataset.manual_dir = tfds_dir, str(IDRID_DUMMY)
    config.parallel.num_devices = 1
    config.train.batch_size = config.eval.batch_size = 2
    config.train.num_steps = config.train.eval_every = 2
    workdir = tmp_path / "workdir"
    train.train_and_evaluate(config, str(workdir))
    config.eval.split = "test"
    train.evaluate(config, str(workdir))
    config.predict.input_dir = str(IDRID_DUMMY / "images" / "test")
    report = predict.run(config, str(workdir))

    validation_metrics = json.loads((workdir / "eval" / "validation" / "metrics.json").read_text())
    assert report["thresholds"] == validation_metrics["validation_thresholds"]
    rows = list(csv.DictReader((workdir / "predict" / "predictions.csv").open()))
    assert list(rows[0]) == ["file", "predicted", "predicted_index", "output"]
    evaluated = {row["id"]: row for row in csv.DictReader((workdir / "eval" / "test" / "per_case.csv").open())}
    assert [row["file"] for row in rows] == ["IDRiD_001.jpg", "IDRiD_002.jpg"]
    for row in rows:
        expected = evaluated[f"test/{Path(row['file']).stem}"]
        assert float(row["output"]) == pytest.approx(float(expected["output"]), abs=1e-4)
        assert int(row["predicted_index"]) == int(expected["predicted"])
        assert row["predicted"] == report["class_names"][int(row["predicted_index"])]
