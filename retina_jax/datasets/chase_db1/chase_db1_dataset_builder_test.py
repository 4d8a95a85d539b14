"""TFDS conformance test of the `chase_db1` builder on `dummy_data/`.

dummy_data/ holds synthetic 999x960 greyscale fundus photographs (JPEG) with both observers'
vessel masks and FOV masks (1-bit PNG), in the sub-folder layout: Image_01L (child 1: train),
Image_09R (child 9: validation) and Image_11L (child 11: the test split).
"""
import tensorflow_datasets as tfds

from retina_jax.datasets.chase_db1 import chase_db1_dataset_builder


class ChaseDb1Test(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = chase_db1_dataset_builder.Builder
    SPLITS = {"train": 1, "validation": 1, "test": 1}


if __name__ == "__main__":
    tfds.testing.test_main()
