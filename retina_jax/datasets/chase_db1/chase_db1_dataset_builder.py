"""`chase_db1`: CHASE_DB1 fundus photographs (999x960) of children, with two observers' vessels.

Data: Fraz et al., "An ensemble classification-based approach applied to retinal blood vessel
segmentation", IEEE TBME 59(9):2538-2548 (2012) — 28 images, both eyes (L, R) of 14 children
of the Child Heart and Health Study in England, each annotated by two observers. CHASE_DB1 has
no official field-of-view masks: the ones used here come from MIA2I/RetinalVesselSegmentation
(binarised; see ../shared/data/chase_db1/SOURCE.md, the default manual dir, which holds
children 1-10 as greyscale copies).

Manual data layout, by file name (each file in its sub-folder, or all in the top folder, as
the official zip has them):
  images/Image_XXY.jpg                1st_manual/Image_XXY_1stHO.png
  2nd_manual/Image_XXY_2ndHO.png      fov_mask/Image_XXY_fov.png
XX = child 01..14, Y = eye L or R.

Splits, by child so that no child's eyes are in two splits: `train` = children 1-8 (16 images),
`validation` = 9-10 (4), `test` = 11-14 (8: the usual "last 8 images" test set; only when
present). The first 20 images are the usual training set, hence train + validation here.

Usage:
  builder = datasets.get_builder("chase_db1")                             # train + validation
  builder = datasets.get_builder("chase_db1", manual_dir="/data/CHASEDB1")  # + test
  ds = builder.as_dataset(split="train+validation")  # the 20 shipped images
"""
import re

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from retina_jax.datasets import PROJECT_ROOT, fundus, image_pairs, validate

DEFAULT_MANUAL_DIR = PROJECT_ROOT.parent / "shared" / "data" / "chase_db1"

IMAGE_SHAPE = (960, 999, 3)
SPLIT_CHILDREN = {
    "train": (1, 2, 3, 4, 5, 6, 7, 8),
    "validation": (9, 10),
    "test": (11, 12, 13, 14),
}
IMAGE_STEM = re.compile(r"Image_(\d\d)([LR])")
# kind of file -> (sub-folder, file-name suffix after the image's stem)
FILES = {"manual": ("1st_manual", "_1stHO"), "manual2": ("2nd_manual", "_2ndHO"),
         "fov": ("fov_mask", "_fov")}

HOMEPAGE = "https://blogs.kingston.ac.uk/retinal/chasedb1/"
CITATION = """\
@article{fraz2012ensemble,
  author = {Fraz, Muhammad Moazam and Remagnino, Paolo and Hoppe, Andreas and Uyyanonvara, Bunyarit
            and Rudnicka, Alicja R. and Owen, Christopher G. and Barman, Sarah A.},
  title = {An ensemble classification-based approach applied to retinal blood vessel segmentation},
  journal = {IEEE Transactions on Biomedical Engineering},
  volume = {59}, number = {9}, pages = {2538--2548}, year = {2012},
  doi = {10.1109/TBME.2012.2205687},
}
"""


def _listing(manual_dir: epath.Path, folder: str) -> dict[str, epath.Path]:
    """stem -> file of `manual_dir/folder`, or of `manual_dir` itself when there is no such folder."""
    return image_pairs.image_files(manual_dir / folder if (manual_dir / folder).is_dir() else manual_dir)


def child_of(case: fundus.Case) -> int:
    return int(IMAGE_STEM.fullmatch(case.id).group(1))


def find_cases(manual_dir: epath.Path) -> list[fundus.Case]:
    """Every Image_XXY photograph with its FOV mask and annotations (the second one optional)."""
    images = {stem: path for stem, path in _listing(manual_dir, "images").items()
              if IMAGE_STEM.fullmatch(stem)}
    if not images:
        raise FileNotFoundError(f"No Image_XXY.jpg photographs in {manual_dir / 'images'} or "
                                f"{manual_dir}.\n{Builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    listings = {kind: _listing(manual_dir, folder) for kind, (folder, _) in FILES.items()}
    cases = []
    for stem, path in images.items():
        found = {kind: listings[kind].get(stem + suffix) for kind, (_, suffix) in FILES.items()}
        for kind, note in (("fov", " CHASE_DB1 ships no FOV masks; see the builder's docstring for "
                                   "where this repo's come from."), ("manual", "")):
            if found[kind] is None:
                folder, suffix = FILES[kind]
                raise FileNotFoundError(f"No {folder} file for {path}: expected "
                                        f"{manual_dir / folder / (stem + suffix)}.png.{note}")
        cases.append(fundus.Case(id=stem, image=path, **found))
    return cases


def cases_by_split(manual_dir: epath.Path) -> dict[str, list[fundus.Case]]:
    """split -> its cases; a split none of whose children is present is left out, except that
    train and validation must be there."""
    split_of_child = {child: split for split, children in SPLIT_CHILDREN.items() for child in children}
    splits = {}
    for case in find_cases(manual_dir):
        child = child_of(case)
        if child not in split_of_child:
            raise ValueError(f"{case.image}: child {child} is not one of CHASE_DB1's 1-14.")
        splits.setdefault(split_of_child[child], []).append(case)
    for required in ("train", "validation"):
        if required not in splits:
            raise ValueError(f"{manual_dir} has no image of children {SPLIT_CHILDREN[required]} "
                             f"(the {required} split).")
    return splits


class Builder(validate.SkipsBadFiles, tfds.core.GeneratorBasedBuilder):
    """CHASE_DB1: full images, both observers' vessel masks and FOV masks, split by child."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Split by child: train 1-8, validation 9-10, test 11-14."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put CHASE_DB1 in the manual dir as images/Image_XXY.jpg, 1st_manual/Image_XXY_1stHO.png, "
        "2nd_manual/Image_XXY_2ndHO.png (optional) and fov_mask/Image_XXY_fov.png (any value > 0 "
        "= inside), or all of them in the top folder as the official zip has them (XX = child "
        "01-14, Y = L or R). CHASE_DB1 (https://blogs.kingston.ac.uk/retinal/chasedb1/) has no "
        "FOV masks; ../shared/data/chase_db1/SOURCE.md says where this repo's came from. Pass the "
        "folder with --config.dataset.manual_dir=PATH.")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "CHASE_DB1 fundus photographs (Nidek NM-200-D, 30 degree FOV, 999x960) of both eyes "
                "of 14 children, with the first and second observers' vessel masks (1 = vessel) and "
                "field-of-view masks (1 = inside). Split by child: train 1-8, validation 9-10, "
                "test 11-14."),
            features=fundus.features(IMAGE_SHAPE, subject=tfds.features.Scalar(
                dtype=np.int32, doc="The child (1-14); its two eyes are one subject.")),
            supervised_keys=None,
            homepage=HOMEPAGE,
            citation=CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        return {split: self._generate_examples(cases)
                for split, cases in cases_by_split(epath.Path(dl_manager.manual_dir)).items()}

    def _generate_examples(self, cases: list[fundus.Case]):
        yield from validate.good_examples(self, cases, lambda case: (
            case.id, {**fundus.example(case, IMAGE_SHAPE, "CHASE_DB1"), "subject": child_of(case)}))
