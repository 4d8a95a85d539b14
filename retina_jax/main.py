"""Entry point: parses flags, then trains, evaluates, explains (Grad-CAM) or predicts.

Usage:
  python -m retina_jax.main --config=configs/vessels.py --workdir=runs/vessels
  python -m retina_jax.main --config=configs/vessels.py:smoke --workdir=/tmp/smoke
  python -m retina_jax.main --config=configs/vessels.py --workdir=runs/vessels \
      --mode=evaluate --config.eval.split=validation
  python -m retina_jax.main --config=configs/duke_fluid.py --workdir=runs/duke_fluid --mode=gradcam
  python -m retina_jax.main --config=configs/drive.py --workdir=runs/drive --mode=predict \
      --config.predict.input_dir=IN --config.predict.output_dir=OUT    # a folder of your images
Any config field can be overridden: --config.model.name=unet --config.train.num_steps=2000.
Training resumes automatically from the latest checkpoint in --workdir. The other modes apply
the model as the workdir's config.json records it was trained (model, preprocessing, data
selection, best or latest checkpoint; see retina_jax/run_config.py): only the fields named on
the command line and the invocation's settings (eval, inference, predict, gradcam, parallel)
come from the command.
"""
import logging as python_logging
import os

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ("train", "evaluate", "gradcam", "predict")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (optionally FILE:ARG, e.g. :smoke).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and reports go.")
flags.DEFINE_enum("mode", "train", MODES, "train (resumes automatically), evaluate, gradcam "
                  "(Grad-CAM overlays of config.gradcam.split), or predict (the images of "
                  "config.predict.input_dir).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(python_logging.Filter):
    """Drops the INFO chatter of checkpointing/dataset libraries; their warnings still show."""
    NOISY_PATHS = ("/orbax/", "/tensorflow_datasets/")

    def filter(self, record: python_logging.LogRecord) -> bool:
        return record.levelno >= python_logging.WARNING or not any(
            path in record.pathname for path in self.NOISY_PATHS)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    # TensorFlow only feeds data: keep it off any accelerator so JAX owns them.
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    import jax

    from retina_jax import parallel
    process_count = parallel.initialize_distributed(FLAGS.config)  # before any backend starts
    jax.config.update("jax_num_cpu_devices", parallel.cpu_device_count(FLAGS.config, process_count,
                                                                    FLAGS.mode))
    if FLAGS.config.compilation_cache_dir:
        parallel.enable_compilation_cache(FLAGS.config.compilation_cache_dir)

    from retina_jax import gradcam, predict, run_config, train
    from retina_jax.ops import onednn_conv

    logging.info("JAX %s, %d process(es), devices: %s; CPU: %s", jax.__version__, jax.process_count(),
                 jax.devices(), onednn_conv.host_cpu())
    if FLAGS.mode == "train":
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
        return
    config = run_config.trained_config(FLAGS.config, FLAGS.workdir,
                                       config_flags.get_override_values(FLAGS["config"]))
    if FLAGS.mode == "gradcam":
        gradcam.run(config, FLAGS.workdir)
    elif FLAGS.mode == "predict":
        predict.run(config, FLAGS.workdir)
    else:
        train.evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
