"""TFDS conformance test of the `retina_vessels` builder on `dummy_data/`.

dummy_data/retinal_vessel_dataset.zip mirrors the real file's layout (uint32 x_*, float64 y_*)
with 3 train, 2 validation and 2 test patches drawn with numpy seed 0 as 8x8 blocks, which keeps
the zip at a few KB.
"""
import tensorflow_datasets as tfds

from retina_jax.datasets.retina_vessels import retina_vessels_dataset_builder


class RetinaVesselsTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = retina_vessels_dataset_builder.Builder
    SPLITS = {"train": 3, "validation": 2, "test": 2}


if __name__ == "__main__":
    tfds.testing.test_main()
