"""`idrid_grading`: IDRiD fundus photographs with diabetic-retinopathy and macular-edema grades.

Data: Porwal et al., "Indian Diabetic Retinopathy Image Dataset (IDRiD): a database for diabetic
retinopathy screening research", Data 3(3):25 (2018) — part "B. Disease Grading": 516 colour
fundus photographs (Kowa VX-10 alpha, 50 degree FOV, 4288x2848 JPEG), officially 413 training
and 103 test images, each with a DR grade (ICDR 0-4) and a risk-of-macular-edema grade (0-2).

Manual data layout (the official one):
  images/train/IDRiD_NNN.jpg  labels/train.csv
  images/test/IDRiD_NNN.jpg   labels/test.csv   (optional: the test split)
A CSV's first three columns are `Image name` (no extension), `Retinopathy grade` and
`Risk of macular edema` (header names are compared without surrounding spaces; later columns,
such as train.csv's empty trailing ones, are ignored). Test names restart at IDRiD_001, so an
example's `id` is `<train|test>/<Image name>`. The default manual dir `../shared/data/idrid_grading`
holds the training part only (its images downscaled to 1024x680).

Every photograph is Graham-preprocessed (`retina_jax.data.fundus_grading.grading_preprocess`:
black border cropped, retina rescaled to radius 256, local average colour subtracted, rim
greyed) into a 512x512 image at preparation time.

Splits: `validation` = 20% of each DR grade of the official training images: a grade's n images
ranked by the sha256 of their name, the first round(0.2 n) of them; `train` = the other training
images; `test` = the official test images, only when the manual dir has images/test/. On the
official 413 training images: validation 83 (grades 0-4: 27/4/27/15/10), train 330
(107/16/109/59/39).

Usage:
  builder = datasets.get_builder("idrid_grading")                          # train + validation
  builder = datasets.get_builder("idrid_grading", manual_dir="/data/IDRiD")  # + test
  ds = builder.as_dataset(split="validation")  # {"image", "label", "dme_risk", "id"}
"""
import csv
import dataclasses
import hashlib
import io

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from retina_jax.data import fundus_grading
from retina_jax.datasets import PROJECT_ROOT, image_pairs, validate

DEFAULT_MANUAL_DIR = PROJECT_ROOT.parent / "shared" / "data" / "idrid_grading"

IMAGE_SIZE = 512
NUM_GRADES = 5
NUM_DME_RISKS = 3
VALIDATION_FRACTION = 0.2
NAME_COLUMN, GRADE_COLUMN, DME_COLUMN = "Image name", "Retinopathy grade", "Risk of macular edema"
COLUMNS = (NAME_COLUMN, GRADE_COLUMN, DME_COLUMN)

HOMEPAGE = "https://idrid.grand-challenge.org/"
CITATION = """\
@article{porwal2018idrid,
  author = {Porwal, Prasanna and Pachade, Samiksha and Kamble, Ravi and Kokare, Manesh and
            Deshmukh, Girish and Sahasrabuddhe, Vivek and Meriaudeau, Fabrice},
  title = {Indian Diabetic Retinopathy Image Dataset ({IDRiD}): a database for diabetic
           retinopathy screening research},
  journal = {Data},
  volume = {3}, number = {3}, pages = {25}, year = {2018},
  doi = {10.3390/data3030025},
}
"""


@dataclasses.dataclass(frozen=True)
class Record:
    folder: str  # "train" or "test"
    name: str    # the CSV's Image name
    image: epath.Path
    grade: int
    dme_risk: int

    @property
    def id(self) -> str:
        return f"{self.folder}/{self.name}"  # names alone repeat across train and test


def _grade(text: str, upper: int, csv_path: epath.Path, line: int, column: str) -> int:
    """`text` as an integer in 0..`upper`, or a ValueError naming the CSV, line and column."""
    if not (text.strip().isdigit() and int(text) <= upper):
        raise ValueError(f"{csv_path}, line {line}: {column!r} is {text!r}; expected an integer "
                         f"0..{upper}.")
    return int(text)


def read_labels(csv_path: epath.Path) -> dict[str, tuple[int, int]]:
    """Image name -> (DR grade, DME risk) from an IDRiD label CSV."""
    rows = csv.reader(io.StringIO(csv_path.read_text(encoding="utf-8-sig")))
    header = [name.strip() for name in next(rows, [])]
    missing = [name for name in COLUMNS if name not in header]
    if missing:
        raise ValueError(f"{csv_path} has no column(s) {missing}; its header is {header}, expected "
                         f"{NAME_COLUMN!r}, {GRADE_COLUMN!r} and {DME_COLUMN!r}.")
    name_at, grade_at, dme_at = (header.index(name) for name in COLUMNS)
    labels = {}
    for line, row in enumerate(rows, start=2):
        if not any(field.strip() for field in row):  # blank lines at the end of the file
            continue
        if len(row) <= max(name_at, grade_at, dme_at):
            raise ValueError(f"{csv_path}, line {line} has {len(row)} field(s); expected "
                             f"{NAME_COLUMN!r}, {GRADE_COLUMN!r} and {DME_COLUMN!r}.")
        name = row[name_at].strip()
        if name in labels:
            raise ValueError(f"{csv_path}, line {line}: {name!r} is listed twice.")
        labels[name] = (_grade(row[grade_at], NUM_GRADES - 1, csv_path, line, GRADE_COLUMN),
                        _grade(row[dme_at], NUM_DME_RISKS - 1, csv_path, line, DME_COLUMN))
    return labels


def folder_records(manual_dir: epath.Path, folder: str) -> list[Record]:
    """The labelled images of `folder` ("train" or "test"): images/<folder>/ with the labels of
    labels/<folder>.csv. Every CSV row needs its image and every image its CSV row.
    """
    csv_path, images_dir = manual_dir / "labels" / f"{folder}.csv", manual_dir / "images" / folder
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} not found: the labels of {images_dir}.\n"
                                f"{Builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    labels, images = read_labels(csv_path), image_pairs.image_files(images_dir)
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled:
        raise ValueError(f"{images[unlabelled[0]]} has no row in {csv_path} "
                         f"({len(unlabelled)} image(s) without a label: {unlabelled[:5]}).")
    without_image = sorted(set(labels) - set(images))
    if without_image:
        raise FileNotFoundError(
            f"{csv_path} lists {without_image[0]!r} but {images_dir / (without_image[0] + '.jpg')} "
            f"does not exist ({len(without_image)} row(s) without an image: {without_image[:5]}).")
    if not labels:
        raise ValueError(f"{csv_path} lists no image.")
    return [Record(folder, name, images[name], *labels[name]) for name in sorted(labels)]


def _rank(record: Record) -> str:
    return hashlib.sha256(record.name.encode()).hexdigest()


def split_validation(records: list[Record]) -> tuple[list[Record], list[Record]]:
    """(train, validation): per DR grade, the round(0.2 n) records first by sha256 of their name."""
    train, validation = [], []
    for grade in range(NUM_GRADES):
        ranked = sorted((record for record in records if record.grade == grade), key=_rank)
        cut = round(VALIDATION_FRACTION * len(ranked))
        validation += ranked[:cut]
        train += ranked[cut:]
    return train, validation


def records_by_split(manual_dir: epath.Path) -> dict[str, list[Record]]:
    """split -> its records; `test` only when the manual dir has images/test/."""
    if not (manual_dir / "images" / "train").is_dir():
        raise FileNotFoundError(f"{manual_dir / 'images' / 'train'} not found.\n"
                                f"{Builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    train, validation = split_validation(folder_records(manual_dir, "train"))
    splits = {"train": train, "validation": validation}
    for split, records in splits.items():
        if not records:
            raise ValueError(
                f"{manual_dir / 'labels' / 'train.csv'} leaves the {split} split empty "
                f"(validation = round({VALIDATION_FRACTION} n) of the n images of each DR grade).")
    if (manual_dir / "images" / "test").is_dir():
        splits["test"] = folder_records(manual_dir, "test")
    return splits


def input_image(path: epath.Path) -> np.ndarray:
    """(512, 512, 3) uint8: the photograph `path` Graham-preprocessed, as this dataset stores its
    images (and `--mode=predict` feeds them to a model); errors name the file."""
    photograph = image_pairs.read_image(path, channels=3)
    try:
        return fundus_grading.grading_preprocess(photograph, IMAGE_SIZE)
    except ValueError as error:
        raise validate.BadFileError(path, f"{path}: {error}") from error


def example(record: Record) -> dict:
    """The features of `record`, its photograph Graham-preprocessed; errors name the file."""
    return {"image": input_image(record.image), "label": record.grade, "dme_risk": record.dme_risk,
            "id": record.id}


class Builder(validate.SkipsBadFiles, tfds.core.GeneratorBasedBuilder):
    """IDRiD disease grading: Graham-preprocessed photographs, DR grade and DME risk."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "train / stratified validation from the training images, test from "
                              "images/test/; 512x512 Graham-preprocessed images."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Unpack IDRiD part B (Disease Grading, https://idrid.grand-challenge.org/, or IEEE "
        "DataPort) into the manual dir in the layout images/train/IDRiD_NNN.jpg with "
        "labels/train.csv and, for the test split, images/test/IDRiD_NNN.jpg with labels/test.csv "
        "(the official CSVs: columns 'Image name', 'Retinopathy grade', 'Risk of macular edema'; "
        "rename the official folders and CSVs to these names). Pass the folder with "
        "--config.dataset.manual_dir=PATH.")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "IDRiD disease-grading fundus photographs, Graham-preprocessed to 512x512 (retina "
                "radius 256 on 50% grey), with the DR grade (ICDR 0-4: none, mild, moderate, "
                "severe non-proliferative, proliferative) and the risk of macular edema (0-2). "
                "validation = 20% of each DR grade of the training images (sha256 of the name), "
                "train = the rest, test = the official test set."),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
                "label": tfds.features.ClassLabel(
                    num_classes=NUM_GRADES, doc="Diabetic-retinopathy grade (ICDR 0-4)."),
                "dme_risk": tfds.features.ClassLabel(
                    num_classes=NUM_DME_RISKS, doc="Risk of diabetic macular edema (0-2)."),
                "id": tfds.features.Text(doc="<train|test>/<Image name>."),
            }),
            supervised_keys=("image", "label"),
            homepage=HOMEPAGE,
            citation=CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        return {split: self._generate_examples(records)
                for split, records in records_by_split(epath.Path(dl_manager.manual_dir)).items()}

    def _generate_examples(self, records: list[Record]):
        yield from validate.good_examples(self, records, lambda record: (record.id, example(record)))
