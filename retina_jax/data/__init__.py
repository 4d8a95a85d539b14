"""Input pipeline: tf.data on CPU, feeding numpy batches to JAX."""
