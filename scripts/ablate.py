"""Runs an ablation sweep (configs/ablations/NAME.py) point by point, then collects its results.

A sweep file defines CONFIG, METRICS, get_sweep() and optionally BASE_OVERRIDES (see
retina_jax/sweep.py). Usage:
  python scripts/ablate.py --sweep=configs/ablations/vessels_models.py --root=runs/ablations/vessels_models
  python scripts/ablate.py --sweep=... --root=... --print_commands   # one line per point, for a scheduler
  python scripts/ablate.py --sweep=... --root=... --collect_only     # tables from what has finished

Each point trains in ROOT/<point name> with the ordinary `python -m retina_jax.main` command,
sequentially: a finished point (its metrics.json and eval/validation/metrics.json exist) is
skipped, an interrupted one resumes from its latest checkpoint. Then ROOT gets

  results.csv   one row per finished point: its overrides, the best checkpoint's validation
                metrics, `step` and `train_seconds`
  results.md    mean +- sample std over the seeds (or folds) of the sweep's METRICS, one line per group
  results.png   bar chart of the first metric (whiskers: std over seeds or folds)
"""
import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

from absl import app, flags, logging

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from retina_jax import io_utils, sweep, viz  # noqa: E402  (after the path is set)

FLAGS = flags.FLAGS
flags.DEFINE_string("sweep", None, "Sweep file: defines CONFIG, METRICS and get_sweep().")
flags.DEFINE_string("root", None, "Folder holding one workdir per point and the results.")
flags.DEFINE_bool("print_commands", False, "Print each point's command and exit.")
flags.DEFINE_bool("collect_only", False, "Only collect the results of finished points.")
flags.mark_flags_as_required(["sweep", "root"])


def load_sweep(path: str | Path):
    """The sweep module at `path`, checked for what the runner needs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Sweep file {path} does not exist.")
    spec = importlib.util.spec_from_file_location(f"sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = [name for name in ("CONFIG", "METRICS", "get_sweep") if not hasattr(module, name)]
    if missing:
        raise ValueError(f"Sweep file {path} lacks {missing}: it must define CONFIG (the config "
                         "file it varies), METRICS (metric names to report) and get_sweep().")
    return module


def result_row(point: sweep.Point, workdir: Path) -> dict:
    """A finished point's overrides, best-checkpoint validation metrics, step and train time."""
    best = json.loads((workdir / sweep.BEST_METRICS).read_text())
    final = json.loads((workdir / sweep.FINAL_METRICS).read_text())
    scalars = {key: value for key, value in best.items() if isinstance(value, (int, float))}
    return {"point": workdir.name, **{key: sweep.format_value(value) for key, value in point.items()},
            **scalars, "step": final.get("step"), "train_seconds": final.get("train_seconds")}


def collect(module, points: list[sweep.Point], root: Path) -> list[dict]:
    """Writes results.csv / .md / .png from the finished points; returns their rows."""
    finished = [(point, root / sweep.point_name(point)) for point in points
                if sweep.is_finished(root / sweep.point_name(point))]
    rows = [result_row(point, workdir) for point, workdir in finished]
    if not rows:
        logging.warning("No finished point in %s yet.", root)
        return rows
    override_keys = list(dict.fromkeys(key for point, _ in finished for key in point))
    metric_keys = [key for key in rows[0] if key not in ("point", *override_keys)]
    io_utils.write_csv(root / "results.csv", rows, ["point", *override_keys, *metric_keys])
    metrics = list(module.METRICS)
    summaries = sweep.summarize(rows, [point for point, _ in finished], metrics)
    table = sweep.markdown_table(summaries, metrics)
    io_utils.atomic_write_bytes(root / "results.md", table.encode())
    if summaries:
        labels = [",".join(value for _, value in summary.overrides) or "base" for summary in summaries]
        io_utils.write_png(root / "results.png", viz.bar_chart(
            labels, [summary.mean(metrics[0]) for summary in summaries],
            [summary.std(metrics[0]) for summary in summaries],
            title=f"{Path(FLAGS.sweep).stem}: validation {metrics[0]}", y_label=metrics[0]))
    print(table)
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    module = load_sweep(FLAGS.sweep)
    points = module.get_sweep()
    base_overrides = getattr(module, "BASE_OVERRIDES", {})
    root = Path(FLAGS.root).resolve()  # the points run from the project root
    if FLAGS.print_commands:
        for point in points:
            print(shlex.join(sweep.command(module.CONFIG, root / sweep.point_name(point), point,
                                           base_overrides)))
        return
    if not FLAGS.collect_only:
        for index, point in enumerate(points, start=1):
            workdir = root / sweep.point_name(point)
            if sweep.is_finished(workdir):
                logging.info("[%d/%d] %s: finished, skipped.", index, len(points), workdir.name)
                continue
            logging.info("[%d/%d] %s: running.", index, len(points), workdir.name)
            subprocess.run(sweep.command(module.CONFIG, workdir, point, base_overrides, sys.executable),
                           cwd=PROJECT_ROOT, check=True)
    collect(module, points, root)


if __name__ == "__main__":
    app.run(main)
