"""TFDS builder for the 64x64 retinal-vessel segmentation seed dataset (`retina_vessels`)."""
