"""`duke_dme`: SD-OCT B-scans (496x768) of eyes with diabetic macular edema, with fluid masks.

Data: Chiu et al., "Kernel regression based segmentation of optical coherence tomography images
with diabetic macular edema", Biomed. Opt. Express 6(4):1172-1194 (2015),
doi:10.1364/BOE.6.001172 — 10 subjects x 11 annotated B-scans, fluid traced by expert grader 1.
Subjects 1-5 ship with this repo (`data/`, see data/SOURCE.md); a full copy is read from
`--config.dataset.manual_dir`.

Manual data layout: `images/img_N.png` (grey OCT) and `masks/img_N.png` (any value > 0 = fluid),
where B-scan N belongs to subject N // 11 + 1. Splits, by subject so that no eye is in two
splits: train = subjects 1-4, validation = subject 5, test = subjects 6-10 (the ReLayNet
protocol's test half; the split exists only when their files are present).

Usage:
  builder = datasets.get_builder("duke_dme")                        # shipped subjects 1-5
  builder = datasets.get_builder("duke_dme", manual_dir="/data/duke")  # + test when present
  ds = builder.as_dataset(split="validation")  # {"image", "mask", "labelled", "id", "subject", "bscan_index"}
"""
import re
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from retina_jax.datasets import image_pairs, validate

DEFAULT_MANUAL_DIR = Path(__file__).parent / "data"

IMAGE_SHAPE = (496, 768, 1)
BSCANS_PER_SUBJECT = 11
# Index within the 61-B-scan volume of the k-th annotated B-scan of a subject (SOURCE.md).
VOLUME_INDEX = (10, 15, 20, 25, 28, 30, 32, 35, 40, 45, 50)
SPLIT_SUBJECTS = {
    "train": (1, 2, 3, 4),
    "validation": (5,),
    "test": (6, 7, 8, 9, 10),
}
FILE_STEM = re.compile(r"img_(\d+)")

HOMEPAGE = "https://people.duke.edu/~sf59/Chiu_BOE_2014_dataset.htm"
CITATION = """\
@article{chiu2015kernel,
  author = {Chiu, Stephanie J. and Allingham, Michael J. and Mettu, Priyatham S. and
            Cousins, Scott W. and Izatt, Joseph A. and Farsiu, Sina},
  title = {Kernel regression based segmentation of optical coherence tomography images with
           diabetic macular edema},
  journal = {Biomedical Optics Express},
  volume = {6}, number = {4}, pages = {1172--1194}, year = {2015},
  doi = {10.1364/BOE.6.001172},
}
"""


def subject_of(bscan_number: int) -> int:
    return bscan_number // BSCANS_PER_SUBJECT + 1


def bscan_number(stem: str, path) -> int:
    match = FILE_STEM.fullmatch(stem)
    if not match:
        raise ValueError(f"{path}: expected files named img_N.png (N = 0..109), got {stem!r}.")
    number = int(match.group(1))
    if subject_of(number) > max(SPLIT_SUBJECTS["test"]):
        raise ValueError(f"{path}: B-scan number {number} is beyond subject 10 (N must be < 110).")
    return number


def pairs_by_split(manual_dir: epath.Path) -> dict[str, list[image_pairs.Pair]]:
    """split -> its image/mask pairs; a split none of whose subjects is present is left out."""
    pairs = image_pairs.find_pairs(manual_dir / "images", manual_dir / "masks")
    unlabelled = [pair.image for pair in pairs if pair.mask is None]
    if unlabelled:
        raise FileNotFoundError(f"No masks/ folder beside {manual_dir / 'images'}; duke_dme needs "
                                f"a fluid mask for every B-scan.")
    split_of_subject = {subject: split for split, subjects in SPLIT_SUBJECTS.items()
                        for subject in subjects}
    splits = {}
    for pair in pairs:
        split = split_of_subject[subject_of(bscan_number(pair.stem, pair.image))]
        splits.setdefault(split, []).append(pair)
    for required in ("train", "validation"):
        if required not in splits:
            raise ValueError(f"{manual_dir} has no B-scan of subject(s) {SPLIT_SUBJECTS[required]} "
                             f"(the {required} split); expected images/img_N.png with N // 11 + 1 "
                             f"in {SPLIT_SUBJECTS[required]}.")
    return splits


def example(pair: image_pairs.Pair) -> dict:
    """The features of one B-scan; its mask is a label map (RGB region ids: any value > 0 is fluid)."""
    image = image_pairs.read_image(pair.image, channels=1)
    if image.shape != IMAGE_SHAPE:
        raise validate.BadFileError(pair.image, f"{pair.image} is {image.shape[1]}x{image.shape[0]} with "
                                                f"{image.shape[2]} channel(s); expected a 768x496 grey B-scan.")
    number = bscan_number(pair.stem, pair.image)
    return {
        "image": image,
        "mask": image_pairs.read_mask(pair.mask, IMAGE_SHAPE[:2], image_path=pair.image, label_map=True),
        "labelled": True,
        "id": pair.stem,
        "subject": subject_of(number),
        "bscan_index": VOLUME_INDEX[number % BSCANS_PER_SUBJECT],
    }


class Builder(validate.SkipsBadFiles, tfds.core.GeneratorBasedBuilder):
    """Duke DME fluid segmentation, split by subject."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Subject-wise train (1-4) / validation (5) / test (6-10) splits."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place the B-scans as images/img_N.png (8-bit grey or R=G=B RGB, 768x496) and the fluid "
        "masks as masks/img_N.png (any value > 0 = fluid) in the manual dir; N = 0..109, subject "
        "N // 11 + 1. Subjects 1-5 ship with this repo under "
        "retina_jax/datasets/duke_dme/data/. The original data (Subject_01..10.mat) is at "
        f"{HOMEPAGE}.")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Duke DME SD-OCT B-scans (Heidelberg Spectralis, 768x496) with expert grader 1's "
                "fluid masks (1 = fluid). 11 annotated B-scans per subject; fluid covers ~0.8% of "
                "a B-scan. Splits by subject: train 1-4, validation 5, test 6-10."),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=IMAGE_SHAPE, dtype=np.uint8),
                "mask": tfds.features.Image(shape=IMAGE_SHAPE, dtype=np.uint8),
                "labelled": tfds.features.Scalar(dtype=np.bool_),
                "id": tfds.features.Text(),
                "subject": tfds.features.Scalar(dtype=np.int32),
                "bscan_index": tfds.features.Scalar(
                    dtype=np.int32, doc="Index of the B-scan within the subject's 61-scan volume."),
            }),
            supervised_keys=None,
            homepage=HOMEPAGE,
            citation=CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        return {split: self._generate_examples(pairs)
                for split, pairs in pairs_by_split(epath.Path(dl_manager.manual_dir)).items()}

    def _generate_examples(self, pairs: list[image_pairs.Pair]):
        yield from validate.good_examples(self, pairs, lambda pair: (pair.stem, example(pair)))

