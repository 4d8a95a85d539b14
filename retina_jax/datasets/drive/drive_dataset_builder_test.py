"""TFDS conformance test of the `drive` builder on `dummy_data/`, which is in DRIVE's layout.

dummy_data/ holds synthetic 565x584 fundus photographs (a bright disc = the FOV mask, a few dark
lines = the vessel annotation; LZW TIFF images, GIF masks) named as the real files: training
images 21 and 22 (train) and 25 (validation), and a test/ folder with images 01 and 02, of which
only 01 has a second observer's annotation (test/2nd_manual/01_manual2.gif).
"""
import tensorflow_datasets as tfds

from retina_jax.datasets.drive import drive_dataset_builder


class DriveTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = drive_dataset_builder.Builder
    SPLITS = {"train": 2, "validation": 1, "test": 2}


if __name__ == "__main__":
    tfds.testing.test_main()
