"""Report files: atomic writes, the run's scalar history, and the pictures made from it."""
import os
import stat

import numpy as np
from clu import metric_writers

from retina_jax import io_utils, viz


def test_atomic_writes_get_the_usual_file_mode_and_leave_no_temp_file(tmp_path):
    io_utils.write_json(tmp_path / "out" / "metrics.json", {"dice": 0.5})
    umask = os.umask(0o022)
    os.umask(umask)
    mode = stat.S_IMODE((tmp_path / "out" / "metrics.json").stat().st_mode)
    assert mode == 0o666 & ~umask
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["metrics.json"]


def test_scalar_history_reads_what_the_run_logged_and_a_resume_overrides_repeated_steps(tmp_path):
    first = metric_writers.create_default_writer(str(tmp_path))
    for step, loss in [(10, 1.0), (20, 0.5), (30, 0.4)]:
        first.write_scalars(step, {"train/loss": loss})
    first.write_scalars(20, {"validation/dice": 0.6})
    first.close()
    os.utime(next(tmp_path.glob("events.out.tfevents.*")), (1, 1))  # the older file
    resumed = metric_writers.create_default_writer(str(tmp_path))
    resumed.write_scalars(30, {"train/loss": 0.3})  # the resumed run repeats step 30
    resumed.write_scalars(40, {"train/loss": 0.2, "validation/dice": 0.7})
    resumed.close()

    history = io_utils.read_scalar_history(tmp_path)
    steps, losses = history["train/loss"]
    np.testing.assert_array_equal(steps, [10, 20, 30, 40])
    np.testing.assert_allclose(losses, [1.0, 0.5, 0.3, 0.2])
    np.testing.assert_array_equal(history["validation/dice"][0], [20, 40])

    curves = viz.learning_curves(history)
    assert curves.dtype == np.uint8 and curves.shape == (320, 960, 3)  # loss panel + validation panel
    assert viz.learning_curves({"validation/dice": history["validation/dice"]}) is None


def test_series_plot_draws_each_series_in_its_colour():
    picture = viz.series_plot({"a": (np.arange(5), np.arange(5.0)), "b": (np.arange(5), -np.arange(5.0))},
                              title="t", x_label="x", y_label="y")
    colours = {tuple(pixel) for pixel in picture.reshape(-1, 3)}
    assert set(viz.SERIES_COLOURS[:2]) <= colours


def test_bar_chart_bar_heights_follow_the_means():
    picture = viz.bar_chart(["low", "high"], [0.70, 0.80], [0.01, None], title="t", y_label="dice")
    heights = [int(np.all(picture == colour, axis=-1).any(axis=1).sum()) for colour in viz.SERIES_COLOURS[:2]]
    assert heights[1] > heights[0] > 0
