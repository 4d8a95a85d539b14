"""`oct2017`: retinal OCT B-scans in four classes (CNV, DME, drusen, normal), Kermany et al. 2018.

Data: Kermany et al., "Identifying medical diagnoses and treatable diseases by image-based deep
learning", Cell 172(5):1122-1131 (2018), doi:10.1016/j.cell.2018.02.010 — Spectralis OCT
B-scans (greyscale JPEGs of varying size, e.g. 512x496, 768x496, 1536x496; some stored as RGB):
83,484 training and 968 test images. Not shipped with this repo: the manual dir is the user's
copy (Mendeley Data doi:10.17632/rscbjbr9sj, "OCT2017").

Manual data layout (the official one):
  train/{CNV,DME,DRUSEN,NORMAL}/<CLASS>-<patient>-<n>.jpeg
  test/{CNV,DME,DRUSEN,NORMAL}/<CLASS>-<patient>-<n>.jpeg
Other top-level folders (such as the Kaggle copy's 32-image val/) are not read.

Images are converted to grey (PIL's luminance, for the RGB-stored files) and resized to 224x224
with bilinear interpolation, NOT keeping the aspect ratio: the common OCT2017 input, which
squeezes the wide (768, 1536 px) scans horizontally.

Splits: `validation` = the training images of the patients whose sha256(patient id) % 10 == 0
(~10% of the patients; a patient's scans, whatever their class, are never in both train and
validation); `train` = the other training images; `test` = the official test folder.

Usage:
  builder = datasets.get_builder("oct2017", manual_dir="/data/OCT2017")
  ds = builder.as_dataset(split="validation")  # {"image", "label", "patient", "id"}
"""
import dataclasses
import hashlib
import re

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from retina_jax.datasets import validate

DEFAULT_MANUAL_DIR = ""  # the data set is not shipped: --config.dataset.manual_dir is required

CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")
IMAGE_SHAPE = (224, 224, 1)
VALIDATION_BUCKETS = 10  # sha256(patient) % 10 == 0 -> validation
FILE_NAME = re.compile(r"(CNV|DME|DRUSEN|NORMAL)-([0-9A-Za-z]+)-(\d+)\.jpe?g", re.IGNORECASE)

HOMEPAGE = "https://data.mendeley.com/datasets/rscbjbr9sj"
CITATION = """\
@article{kermany2018identifying,
  author = {Kermany, Daniel S. and Goldbaum, Michael and Cai, Wenjia and Valentim, Carolina C. S.
            and Liang, Huiying and Baxter, Sally L. and McKeown, Alex and Yang, Ge and Wu, Xiaokang
            and Yan, Fangbing and others},
  title = {Identifying medical diagnoses and treatable diseases by image-based deep learning},
  journal = {Cell},
  volume = {172}, number = {5}, pages = {1122--1131}, year = {2018},
  doi = {10.1016/j.cell.2018.02.010},
}
"""


@dataclasses.dataclass(frozen=True)
class Scan:
    id: str  # <split folder>/<class>/<file stem>
    image: epath.Path
    label: str
    patient: str


def parse_scan(path: epath.Path, folder: str) -> Scan:
    """The scan of `path` (in `folder`/<class>/), named <CLASS>-<patient>-<n>.jpeg."""
    label = path.parent.name
    match = FILE_NAME.fullmatch(path.name)
    if not match:
        raise ValueError(f"{path}: expected a file named {label}-<patient>-<n>.jpeg.")
    if match.group(1).upper() != label:
        raise ValueError(f"{path}: the file name says {match.group(1)!r} but the file is in the "
                         f"{label} folder.")
    return Scan(f"{folder}/{label}/{path.stem}", path, label, match.group(2))


def folder_scans(manual_dir: epath.Path, folder: str) -> list[Scan]:
    """The scans of `manual_dir/folder` ("train" or "test"), sorted by id; hidden files skipped."""
    split_dir = manual_dir / folder
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir} not found.\n{Builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    scans = []
    for class_dir in sorted(split_dir.iterdir()):
        if class_dir.name.startswith("."):
            continue
        if class_dir.name not in CLASSES or not class_dir.is_dir():
            raise ValueError(f"{class_dir}: unexpected entry; {split_dir} may hold only the class "
                             f"folders {', '.join(CLASSES)}.")
        scans += [parse_scan(path, folder) for path in sorted(class_dir.iterdir())
                  if not path.name.startswith(".")]
    if not scans:
        raise ValueError(f"{split_dir} holds no scan (expected {split_dir}/<class>/<CLASS>-"
                         f"<patient>-<n>.jpeg with <class> in {', '.join(CLASSES)}).")
    return scans


def is_validation_patient(patient: str) -> bool:
    return int(hashlib.sha256(patient.encode()).hexdigest(), 16) % VALIDATION_BUCKETS == 0


def scans_by_split(manual_dir: epath.Path) -> dict[str, list[Scan]]:
    """split -> its scans: train and validation (by patient) from train/, test from test/."""
    training = folder_scans(manual_dir, "train")
    splits = {"train": [scan for scan in training if not is_validation_patient(scan.patient)],
              "validation": [scan for scan in training if is_validation_patient(scan.patient)],
              "test": folder_scans(manual_dir, "test")}
    if not splits["validation"]:
        raise ValueError(f"No patient of {manual_dir / 'train'} falls in the validation split "
                         f"(sha256(patient) % {VALIDATION_BUCKETS} == 0); it needs more patients.")
    return splits


def input_image(path: epath.Path) -> np.ndarray:
    """(224, 224, 1) uint8: the B-scan `path` in grey (PIL's luminance), resized bilinearly
    without keeping its aspect, as this dataset stores its images (and `--mode=predict` feeds
    them to a model)."""
    grey = Image.fromarray(validate.decode_image(path)).convert("L")
    return np.asarray(grey.resize(IMAGE_SHAPE[1::-1], Image.Resampling.BILINEAR))[..., None]


class Builder(validate.SkipsBadFiles, tfds.core.GeneratorBasedBuilder):
    """OCT2017 (Kermany 2018): grey B-scans at 224x224 in four classes, split by patient."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "train / validation (by patient) from train/, test from test/; "
                              "224x224 grey, aspect not kept."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Unpack OCT2017 (Kermany et al. 2018, {HOMEPAGE}: OCT2017.tar.gz) and pass its folder "
        "with --config.dataset.manual_dir=PATH. It must hold train/ and test/, each with the class "
        "folders CNV/, DME/, DRUSEN/, NORMAL/ of JPEGs named <CLASS>-<patient>-<n>.jpeg.")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "OCT2017 retinal OCT B-scans (Spectralis) labelled CNV, DME, DRUSEN or NORMAL, "
                "converted to grey and resized bilinearly to 224x224 (aspect not kept). "
                "validation = training patients with sha256(patient id) % 10 == 0, train = the "
                "other training patients, test = the official test set."),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=IMAGE_SHAPE, dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=CLASSES),
                "patient": tfds.features.Text(doc="Patient id from the file name."),
                "id": tfds.features.Text(doc="<train|test>/<class>/<file stem>."),
            }),
            supervised_keys=("image", "label"),
            homepage=HOMEPAGE,
            citation=CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        return {split: self._generate_examples(scans)
                for split, scans in scans_by_split(epath.Path(dl_manager.manual_dir)).items()}

    def _generate_examples(self, scans: list[Scan]):
        yield from validate.good_examples(self, scans, lambda scan: (scan.id, {
            "image": input_image(scan.image), "label": scan.label, "patient": scan.patient,
            "id": scan.id}))
