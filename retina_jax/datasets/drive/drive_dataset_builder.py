"""`drive`: DRIVE colour fundus photographs (565x584) with vessel and field-of-view masks.

Data: Staal et al., "Ridge-based vessel segmentation in color images of the retina", IEEE TMI
23(4):501-509 (2004) — 40 images from a Dutch diabetic-retinopathy screening programme: 20
training (21-40) and 20 test (01-20) images, each with a first observer's vessel annotation
and a field-of-view mask; the test images also have a second observer's annotation.

Manual data layout (the official one):
  training/images/NN_training.tif  training/1st_manual/NN_manual1.gif  training/mask/NN_training_mask.gif
  test/images/NN_test.tif          test/1st_manual/NN_manual1.gif      test/mask/NN_test_mask.gif
                                   test/2nd_manual/NN_manual2.gif (optional)
(the annotation and mask files may also be PNG/TIFF with the same stem). The default manual dir
`../shared/data/drive` holds the training folder only.

Splits: `train` = training images 21-24, 26-29, 31-34, 36-39 (16); `validation` = 25, 30, 35, 40
(every fifth training image, 4; 25 shows pathology, as do 4 of the 20 test images); `test` =
the test folder, only when the manual dir has one (unlabelled when it has no test/1st_manual/).

Usage:
  builder = datasets.get_builder("drive")                          # train + validation
  builder = datasets.get_builder("drive", manual_dir="/data/DRIVE")  # + test
  ds = builder.as_dataset(split="validation")  # {"image", "mask", "fov", "mask2", "has_mask2", "labelled", "id"}
"""
import re

import tensorflow_datasets as tfds
from etils import epath

from retina_jax.datasets import PROJECT_ROOT, fundus, image_pairs, validate

DEFAULT_MANUAL_DIR = PROJECT_ROOT.parent / "shared" / "data" / "drive"

IMAGE_SHAPE = (584, 565, 3)
VALIDATION_IDS = (25, 30, 35, 40)

HOMEPAGE = "https://drive.grand-challenge.org/"
CITATION = """\
@article{staal2004ridge,
  author = {Staal, Joes and Abramoff, Michael D. and Niemeijer, Meindert and Viergever, Max A. and
            van Ginneken, Bram},
  title = {Ridge-based vessel segmentation in color images of the retina},
  journal = {IEEE Transactions on Medical Imaging},
  volume = {23}, number = {4}, pages = {501--509}, year = {2004},
  doi = {10.1109/TMI.2004.825627},
}
"""


def _files(folder: epath.Path) -> dict[str, epath.Path]:
    return image_pairs.image_files(folder) if folder.is_dir() else {}


def folder_cases(folder: epath.Path, kind: str) -> list[fundus.Case]:
    """The cases of `folder` (training/ or test/; `kind`, "training" or "test", is the word in
    its file names).

    Every image needs its FOV mask, and its first observer's annotation when `1st_manual/`
    exists (a test folder without it is unlabelled); `2nd_manual/` files are optional.
    """
    manual_dir = folder / "1st_manual"
    manuals, manuals2, fovs = _files(manual_dir), _files(folder / "2nd_manual"), _files(folder / "mask")
    cases = []
    for stem, path in image_pairs.image_files(folder / "images").items():
        match = re.fullmatch(rf"(\d\d)_{kind}", stem)
        if not match:
            raise ValueError(f"{path}: expected DRIVE images named NN_{kind}.tif (NN = 2 digits).")
        number = match.group(1)
        fov = fovs.get(f"{number}_{kind}_mask")
        if fov is None:
            raise FileNotFoundError(f"No field-of-view mask for {path}: expected "
                                    f"{folder / 'mask' / f'{number}_{kind}_mask.gif'}.")
        manual = manuals.get(f"{number}_manual1")
        if manual is None and manual_dir.is_dir():
            raise FileNotFoundError(f"No vessel annotation for {path}: expected "
                                    f"{manual_dir / f'{number}_manual1.gif'}.")
        cases.append(fundus.Case(id=stem, image=path, fov=fov, manual=manual,
                                 manual2=manuals2.get(f"{number}_manual2")))
    if not cases:
        raise ValueError(f"{folder / 'images'} holds no image files (expected NN_{kind}.tif).")
    return cases


def cases_by_split(manual_dir: epath.Path) -> dict[str, list[fundus.Case]]:
    """split -> its cases; `test` only when the manual dir has test/images/."""
    training = manual_dir / "training"
    if not (training / "images").is_dir():
        raise FileNotFoundError(f"{training / 'images'} not found.\n{Builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    cases = folder_cases(training, "training")
    splits = {"train": [case for case in cases if int(case.id[:2]) not in VALIDATION_IDS],
              "validation": [case for case in cases if int(case.id[:2]) in VALIDATION_IDS]}
    for split, split_cases in splits.items():
        if not split_cases:
            raise ValueError(f"{training / 'images'} has no image of the {split} split (validation = "
                             f"images {VALIDATION_IDS}, train = the other training images).")
    if (manual_dir / "test" / "images").is_dir():
        splits["test"] = folder_cases(manual_dir / "test", "test")
    return splits


class Builder(validate.SkipsBadFiles, tfds.core.GeneratorBasedBuilder):
    """DRIVE: full images, vessel masks, FOV masks and (test) the second observer's masks."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "train / validation (25, 30, 35, 40) from training/, test from test/."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Unpack DRIVE (https://drive.grand-challenge.org/) in the official layout into the manual "
        "dir: training/images/NN_training.tif, training/1st_manual/NN_manual1.gif, "
        "training/mask/NN_training_mask.gif, and for the test split test/images/NN_test.tif, "
        "test/mask/NN_test_mask.gif, test/1st_manual/NN_manual1.gif (without it the test split "
        "is unlabelled) and optionally test/2nd_manual/NN_manual2.gif. Pass the folder with "
        "--config.dataset.manual_dir=PATH.")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "DRIVE colour fundus photographs (Canon CR5, 45 degree FOV, 565x584) with the first "
                "observer's vessel masks (1 = vessel), field-of-view masks (1 = inside) and, for "
                "the test images, the second observer's masks. train = training images except "
                f"{VALIDATION_IDS}, validation = {VALIDATION_IDS}, test = the official test set."),
            features=fundus.features(IMAGE_SHAPE),
            supervised_keys=None,
            homepage=HOMEPAGE,
            citation=CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        return {split: self._generate_examples(cases)
                for split, cases in cases_by_split(epath.Path(dl_manager.manual_dir)).items()}

    def _generate_examples(self, cases: list[fundus.Case]):
        yield from validate.good_examples(
            self, cases, lambda case: (case.id, fundus.example(case, IMAGE_SHAPE, "DRIVE")))
