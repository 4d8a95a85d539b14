"""TFDS conformance test of the `duke_dme` builder on `dummy_data/`.

dummy_data/ holds five synthetic 768x496 B-scans (a bright band with a dark elliptical "cyst",
its mask) named as the real files: img_0 and img_11 (subjects 1 and 2: train), img_44
(subject 5: validation), img_55 and img_109 (subjects 6 and 10: the held-out test split).
img_11 uses the original conversion's encoding (R=G=B RGB image, RGB mask with region id 241).
"""
import tensorflow_datasets as tfds

from retina_jax.datasets.duke_dme import duke_dme_dataset_builder


class DukeDmeTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = duke_dme_dataset_builder.Builder
    SPLITS = {"train": 2, "validation": 1, "test": 2}


if __name__ == "__main__":
    tfds.testing.test_main()
