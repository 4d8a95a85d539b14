"""`--mode=predict`: a folder of a user's images in; probability maps and masks (segmentation) or
classes and grades (classification) out, from the workdir's best checkpoint.

Usage:
  python -m retina_jax.main --config=configs/drive.py --workdir=runs/drive --mode=predict \
      --config.predict.input_dir=IN --config.predict.output_dir=OUT

Inputs: every file of IN with an image extension (tif, tiff, gif, png, jpg, jpeg, bmp, in any
case; not recursive; hidden files and other files are ignored), in name order; two files with
one stem (a.png, a.tif) are an error, as their outputs would collide. Each goes through what
training did to its dataset's images, with the same functions: the builder's reading of a raw
file (`datasets.input_image`: the dataset's channel count; oct2017's 224x224 grey,
idrid_grading's Graham preprocessing), the one preprocessing of training and evaluation
(`preprocess.preprocess_example` with config.input, resizing included), and evaluation's
predictor (`inference.make_predictor` with config.inference: whole image or sliding window,
flip TTA; with config.input.fov_diameter, each image at the scale its own FOV width gives).
Segmentation models are fully convolutional: inputs may have any size. Images are predicted one
at a time (a new size or scale compiles the model again), on CPU on one device that every core
serves (`parallel.cpu_device_count`).

Field of view (datasets with a `fov` feature: drive, chase_db1), used as evaluation uses it (the
per-image standardisation counts only its pixels; probabilities outside it are 0): the mask
`<stem>.<ext>`, `<stem>_mask.<ext>` or `<stem>_fov.<ext>` (DRIVE's and CHASE_DB1's names) of
config.predict.fov_dir when that is set, else `fundus.estimate_fov` (brightest channel > 15).

OUT/, segmentation:
  <stem>_probability.png  8-bit grey: round(255 x probability), at the input file's size
  <stem>_mask.png         8-bit: 255 where probability >= the threshold, else 0
  predictions.csv         file, width, height, foreground_fraction (of the mask),
                          inference_scale (config.inference.scale, or with config.input.
                          fov_diameter the image's own: fov_diameter / its FOV width)
OUT/, classification:
  predictions.csv         file, predicted (class name), predicted_index, then p_<class> (softmax
                          head) or output (regression head; the grade is the number of
                          thresholds the output reaches)
OUT/report.json           checkpoint step, threshold(s) and where they came from, file counts
OUT/skipped.csv           with config.predict.skip_bad_files: the files left out (file, reason)

Thresholds: the ones chosen on the validation split for the same checkpoint, when
workdir/eval/<validation split>/metrics.json holds them (`validation_threshold` of segmentation
with config.eval.tune_threshold; `validation_thresholds` of a regression head), else
config.eval.threshold (segmentation) or k - 0.5 (regression).

Bad input (datasets/validate.py): a missing, empty or unreadable IN is an error naming it; a
bad file (unreadable, corrupt or truncated, 16-bit, transparent, wrong channels, a FOV mask
missing, of another size, not binary or empty, too small for the preprocessing) is an error naming it
and what was expected, or with config.predict.skip_bad_files it is left out and listed in
skipped.csv (if every file is bad, that is an error either way). Every file is read and
preprocessed once before the model is loaded (and again when it is predicted, so that memory
holds one image at a time): a bad file fails in seconds, before the model compiles.

Atomic output: everything is written into a hidden folder beside OUT (`.OUT.partial-*`), which
becomes OUT by one rename when every file is done, and is deleted on any error; so OUT holds a
complete prediction or none. A previous prediction in OUT is replaced; a non-empty OUT holding
anything else is refused before any work.
"""
import functools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging
from etils import epath

from retina_jax import datasets, inference, io_utils, parallel, train, viz
from retina_jax.data import pipeline, preprocess
from retina_jax.datasets import fundus, image_pairs, validate
from retina_jax.tasks import classification

# Names of a FOV mask file for the image <stem>, without the extension, in order of preference.
FOV_SUFFIXES = ("", "_mask", "_fov")
REPORT = "report.json"
SKIPPED = "skipped.csv"
PREDICTIONS = "predictions.csv"


def input_files(input_dir: str) -> list[epath.Path]:
    """The image files of `input_dir`, sorted by name; a missing or empty folder is an error."""
    if not input_dir:
        raise ValueError("Pass the folder of images to predict: --config.predict.input_dir=PATH.")
    folder = epath.Path(input_dir)
    if not folder.exists():
        raise FileNotFoundError(f"Input folder {folder} does not exist (config.predict.input_dir).")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file; config.predict.input_dir must be a folder of images.")
    files = image_pairs.image_files(folder)
    if not files:
        raise ValueError(f"{folder} holds no image files (expected "
                         f"{', '.join(image_pairs.IMAGE_EXTENSIONS)}, in any case).")
    return [files[stem] for stem in sorted(files)]


def fov_mask_file(image_path: epath.Path, fov_files: dict[str, epath.Path]) -> epath.Path:
    """The FOV mask of `image_path` among `fov_files` (stem -> path), by FOV_SUFFIXES."""
    for suffix in FOV_SUFFIXES:
        if image_path.stem + suffix in fov_files:
            return fov_files[image_path.stem + suffix]
    names = " or ".join(f"{image_path.stem}{suffix}.<ext>" for suffix in FOV_SUFFIXES)
    raise validate.BadFileError(image_path, f"{image_path} has no field-of-view mask in the FOV folder: "
                                            f"expected {names}.")


def input_reader(config: ml_collections.ConfigDict, builder) -> Callable[[epath.Path], dict]:
    """path -> {"image" (H,W,C) uint8 as the dataset stores images, and "fov" (H,W,1) uint8 for
    datasets that have one}; bad files raise validate.BadFileError."""
    uses_fov = "fov" in builder.info.features
    fov_dir = config.predict.fov_dir
    if fov_dir and not uses_fov:
        raise ValueError(f"config.predict.fov_dir is set, but dataset {config.dataset.name!r} has no "
                         "field of view; leave it empty.")
    if fov_dir and not epath.Path(fov_dir).is_dir():
        raise FileNotFoundError(f"FOV folder {fov_dir} does not exist (config.predict.fov_dir).")
    fov_files = image_pairs.image_files(epath.Path(fov_dir)) if fov_dir else None

    def read(path: epath.Path) -> dict:
        image = datasets.input_image(config.dataset.name, builder, path)
        if not uses_fov:
            return {"image": image}
        if fov_files is None:
            fov = fundus.require_fov(fundus.estimate_fov(image), path, f"no pixel is brighter than "
                                     f"{fundus.FOV_THRESHOLD} (the estimated FOV)")
        else:
            fov_path = fov_mask_file(path, fov_files)
            fov = fundus.require_fov(image_pairs.read_mask(fov_path, image.shape[:2], image_path=path),
                                     path, f"its mask {fov_path} is all 0")
        return {"image": image, "fov": fov}

    return read


def model_input(example: dict, config: ml_collections.ConfigDict, path) -> np.ndarray:
    """(1, h, w, c) float32: `example` through training's preprocessing (config.input); an image
    it cannot take (e.g. smaller than the CLAHE grid) is an error naming `path`."""
    try:
        processed = preprocess.preprocess_example({key: tf.constant(value) for key, value in example.items()},
                                                  config.input)
    except (ValueError, tf.errors.InvalidArgumentError) as error:
        raise validate.BadFileError(path, f"{path} cannot be preprocessed as training images were "
                                          f"({error}).") from error
    return processed["image"].numpy()[None]


def segmentation_threshold(config: ml_collections.ConfigDict, workdir: Path, step: int) -> tuple[float, str]:
    """(threshold, where it came from) of the masks."""
    chosen = train.saved_validation_choice(workdir, config.dataset.validation_split, step, "validation_threshold")
    if chosen is not None:
        return float(chosen), f"validation_threshold of eval/{config.dataset.validation_split}/metrics.json"
    return float(config.eval.threshold), "config.eval.threshold"


def regression_thresholds(config: ml_collections.ConfigDict, workdir: Path, step: int,
                          num_classes: int) -> tuple[np.ndarray, str]:
    """(grade thresholds, where they came from) of a regression head."""
    chosen = train.saved_validation_choice(workdir, config.dataset.validation_split, step, "validation_thresholds")
    if chosen is not None:
        return np.asarray(chosen, np.float64), f"validation_thresholds of eval/{config.dataset.validation_split}/metrics.json"
    return classification.default_thresholds(num_classes), "k - 0.5"


def original_size(probability: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, 1) probabilities resized (bilinearly) back to (height, width, 1) when they differ."""
    if probability.shape[:2] == (height, width):
        return probability
    resized = tf.image.resize(probability, (height, width), method="bilinear").numpy()
    return np.clip(resized, 0.0, 1.0)


def image_scale(fov: np.ndarray, config: ml_collections.ConfigDict, path) -> float:
    """The inference scale config.input.fov_diameter gives one image of FOV mask `fov` (H, W, 1):
    its FOV width measured as evaluation measures a split's, on the mask at the size the model
    sees (pipeline.fov_as_seen)."""
    width_seen = inference.fov_width(pipeline.fov_as_seen(tf.constant(fov), config))
    return inference.scale_to_fov(config.input.fov_diameter, [width_seen], source=str(path))


def segmenter(experiment: train.Experiment, state, threshold: float, out_dir: Path) -> Callable:
    """(path, raw example, model input) -> its predictions.csv row, after writing
    <stem>_probability.png and <stem>_mask.png into `out_dir`."""
    # Experiment has checked the scale settings.
    settings, fov_diameter = experiment.config.inference, experiment.config.input.fov_diameter
    predictors = {}  # inference scale -> its jitted predictor
    variables = train.evaluation_variables(state)
    replicated = parallel.replicated(experiment.mesh)

    def predictor(scale: float) -> Callable:
        if scale not in predictors:
            predictors[scale] = jax.jit(inference.make_predictor(experiment.model, settings, scale))
        return predictors[scale]

    def predict_file(path: epath.Path, example: dict, image: np.ndarray) -> dict:
        scale = settings.scale
        if fov_diameter:
            scale = image_scale(example["fov"], experiment.config, path)
        probability = np.asarray(predictor(scale)(variables, jax.device_put(image, replicated)))[0]
        height, width = example["image"].shape[:2]
        probability = original_size(probability, height, width)
        if "fov" in example:
            probability = probability * example["fov"]
        mask = probability[..., 0] >= threshold
        io_utils.write_png(out_dir / f"{path.stem}_probability.png", viz.probability_map(probability))
        io_utils.write_png(out_dir / f"{path.stem}_mask.png", mask.astype(np.uint8) * 255)
        return {"file": path.name, "width": width, "height": height,
                "foreground_fraction": round(float(mask.mean()), 6), "inference_scale": scale}

    return predict_file


def classifier(experiment: train.Experiment, state, thresholds: np.ndarray | None) -> Callable:
    """(path, raw example, model input) -> its predictions.csv row."""
    head, names = experiment.config.classification.head, experiment.class_names
    scores_of = jax.jit(functools.partial(train.classification_eval_step, model=experiment.model, head=head))
    replicated = parallel.replicated(experiment.mesh)

    def predict_file(path: epath.Path, example: dict, image: np.ndarray) -> dict:
        scores = np.asarray(scores_of(state, {"image": jax.device_put(image, replicated)}), np.float64)
        index = int(classification.predict(scores, head, thresholds)[0])
        row = {"file": path.name, "predicted": names[index], "predicted_index": index}
        if head == "softmax":
            row.update({f"p_{name}": round(float(p), 6) for name, p in zip(names, scores[0])})
        else:
            row["output"] = round(float(scores[0, 0]), 6)
        return row

    return predict_file


def check_output_dir(output_dir: Path) -> None:
    """Refuses an `output_dir` that holds anything but a previous prediction (which is replaced)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"{output_dir} is a file; config.predict.output_dir must be a folder.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not is_prediction(output_dir):
        raise FileExistsError(f"{output_dir} holds files that are not a previous prediction; choose an "
                              "empty or new config.predict.output_dir.")


def is_prediction(folder: Path) -> bool:
    report = folder / REPORT
    return report.is_file() and json.loads(report.read_text()).get("mode") == "predict"


def publish(staging: Path, output_dir: Path) -> None:
    """Makes the finished `staging` folder `output_dir` by renames (a previous one is removed)."""
    if not output_dir.exists():
        os.rename(staging, output_dir)
        return
    previous = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.previous-"))
    os.rename(output_dir, previous / output_dir.name)
    os.rename(staging, output_dir)
    shutil.rmtree(previous)


def load(path: epath.Path, read: Callable, config: ml_collections.ConfigDict) -> tuple[dict, np.ndarray]:
    """(raw example, model input) of the image file `path`; a bad file raises BadFileError."""
    example = read(path)
    return example, model_input(example, config, path)


def check_inputs(files: list[epath.Path], read: Callable, config: ml_collections.ConfigDict
                 ) -> tuple[list[epath.Path], list[dict]]:
    """(the good files, skipped.csv rows of the bad ones): every file read and preprocessed once
    before the model is loaded, so that a bad file fails in seconds and before anything is
    written. A bad file raises unless config.predict.skip_bad_files; all of them bad raises."""
    good, skipped = [], []
    for path in files:
        try:
            load(path, read, config)
        except validate.BadFileError as error:
            if not config.predict.skip_bad_files:
                raise
            logging.warning("Skipping %s", error)
            skipped.append({"file": error.path, "reason": str(error)})
            continue
        good.append(path)
    if not good:
        raise ValueError(f"All {len(files)} image file(s) of {config.predict.input_dir} are bad; the "
                         f"first: {skipped[0]['reason']}")
    return good, skipped


def make_staging_dir(output_dir: Path) -> Path:
    """A new hidden folder beside `output_dir`, with the permissions of a folder made by mkdir."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.partial-"))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    return staging


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Predicts every image of config.predict.input_dir with the workdir's `config.eval.checkpoint`
    checkpoint into config.predict.output_dir ("" = workdir/predict); returns the report.

    Order: the inputs are listed, then read and preprocessed (bad files fail or are skipped), and
    only then is the model restored and run; see the module docstring for what is written.
    """
    if jax.process_count() > 1:
        raise ValueError("--mode=predict runs in one process; start it without a multi-process launcher.")
    workdir = Path(workdir)
    settings = config.predict
    files = input_files(settings.input_dir)
    output_dir = Path(settings.output_dir or workdir / "predict").resolve()
    check_output_dir(output_dir)
    builder = datasets.get_builder(config.dataset.name, data_dir=config.dataset.data_dir,
                                   manual_dir=config.dataset.manual_dir,
                                   skip_bad_files=config.dataset.skip_bad_files)
    read = input_reader(config, builder)
    good, skipped = check_inputs(files, read, config)
    experiment = train.Experiment(config)
    state, step = train.restore_evaluation_checkpoint(experiment, workdir)
    report = {"mode": "predict", "workdir": str(workdir.resolve()), "input_dir": str(settings.input_dir),
              "checkpoint_step": step, "task": config.task, "dataset": config.dataset.name,
              "fov": ("none" if "fov" not in builder.info.features
                      else settings.fov_dir or f"estimated (brightest channel > {fundus.FOV_THRESHOLD})"),
              "num_files": len(files), "num_predicted": len(good), "num_skipped": len(skipped)}
    staging = make_staging_dir(output_dir)
    try:
        if config.task == "classification":
            thresholds, source = (regression_thresholds(config, workdir, step, len(experiment.class_names))
                                  if config.classification.head == "regression" else (None, None))
            predict_file = classifier(experiment, state, thresholds)
            report.update(class_names=experiment.class_names, thresholds=None if thresholds is None
                          else thresholds.tolist(), thresholds_from=source)
        else:
            threshold, source = segmentation_threshold(config, workdir, step)
            predict_file = segmenter(experiment, state, threshold, staging)
            report.update(threshold=threshold, threshold_from=source)
        started = time.perf_counter()
        rows = [predict_file(path, *load(path, read, config)) for path in good]
        seconds = time.perf_counter() - started
        io_utils.write_csv(staging / PREDICTIONS, rows, list(rows[0]))
        if settings.skip_bad_files:
            io_utils.write_csv(staging / SKIPPED, skipped, validate.SKIPPED_COLUMNS)
        io_utils.write_json(staging / REPORT, report)
        publish(staging, output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logging.info("Predicted %d of %d image(s) of %s with checkpoint step %d into %s in %.1f s "
                 "(compiling included)%s.", len(good), len(files), settings.input_dir, step,
                 output_dir, seconds,
                 f"; {len(skipped)} bad file(s) skipped, listed in {SKIPPED}" if skipped else "")
    return report
