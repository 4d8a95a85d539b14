"""Ablation sweeps: declared as lists of config overrides, run point by point, summarised.

A sweep file (configs/ablations/NAME.py) names the config it varies and returns its points:

  CONFIG = "configs/vessels.py"
  METRICS = ("dice", "auc_roc")          # the first one is plotted
  BASE_OVERRIDES = {"train.num_steps": 150}   # optional: every point's budget
  def get_sweep():
      return sweep.product(sweep.axis("model.name", ["unet", "hourglass"]),
                           sweep.axis("seed", [0, 1]))

Each point is a dict {dotted config key: value}; it runs as the ordinary command
`python -m retina_jax.main --config=CONFIG --workdir=ROOT/<point name> --config.KEY=VALUE ...`
(BASE_OVERRIDES first, then the point's), so a point resumes like any run and a cluster
scheduler can run the printed commands.
Points that differ only in `seed` or in the cross-validation fold (`dataset.cross_validation.fold`)
form a group, reported as mean +- std over its runs: over seeds, or over folds (a k-fold
cross-validation estimate, e.g. configs/ablations/drive_cv.py).
"""
import dataclasses
import itertools
import math
import re
from pathlib import Path
from typing import Any, Sequence

Point = dict[str, Any]
# Keys whose values replicate one setting rather than vary it.
REPLICATE_KEYS = ("seed", "dataset.cross_validation.fold")
# What a finished point leaves (train_and_evaluate): the final metrics with the training time,
# and the best checkpoint's validation metrics.
FINAL_METRICS = "metrics.json"
BEST_METRICS = Path("eval") / "validation" / "metrics.json"


def axis(key: str, values: Sequence) -> list[Point]:
    """One override key taking each of `values`."""
    if not values:
        raise ValueError(f"Sweep axis {key!r} has no values.")
    return [{key: value} for value in values]


def product(*axes: list[Point]) -> list[Point]:
    """Every combination of one point from each axis (the first axis varies slowest)."""
    return [_merge(combination) for combination in itertools.product(*axes)]


def zip_axes(*axes: list[Point]) -> list[Point]:
    """Points taken side by side: the i-th point of every axis together (equal lengths)."""
    lengths = {len(points) for points in axes}
    if len(lengths) > 1:
        raise ValueError(f"zip_axes needs axes of equal length, got lengths {[len(p) for p in axes]}.")
    return [_merge(combination) for combination in zip(*axes)]


def _merge(points: Sequence[Point]) -> Point:
    merged: Point = {}
    for point in points:
        shared = merged.keys() & point.keys()
        if shared:
            raise ValueError(f"Sweep axes both set {sorted(shared)}.")
        merged.update(point)
    return merged


def point_name(point: Point) -> str:
    """A workdir name that says what the point sets, e.g. `model.name=unet,seed=0`."""
    parts = [f"{key}={display_value(value)}" for key, value in point.items()]
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", ",".join(parts)) or "base"


def display_value(value) -> str:
    """A value as names and tables show it (floats to 4 significant digits)."""
    return f"{value:.4g}" if isinstance(value, float) else format_value(value)


def format_value(value) -> str:
    """A value as ml_collections' flag parser reads it back (tuples as `(a, b)`)."""
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(format_value(item) for item in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def command(config: str, workdir: Path, point: Point, base_overrides: Point | None = None,
            python: str = "python") -> list[str]:
    """The training command of one point (`base_overrides`, then the point's own)."""
    overrides = {**(base_overrides or {}), **point}
    return [python, "-m", "retina_jax.main", f"--config={config}", f"--workdir={workdir}",
            *(f"--config.{key}={format_value(value)}" for key, value in overrides.items())]


def is_finished(workdir: Path) -> bool:
    return (workdir / FINAL_METRICS).exists() and (workdir / BEST_METRICS).exists()


def group_key(point: Point) -> tuple:
    """What identifies a point's group: every override but the seed and the fold."""
    return tuple((key, display_value(value)) for key, value in point.items() if key not in REPLICATE_KEYS)


@dataclasses.dataclass
class GroupSummary:
    """One group's metric values over its runs (seeds, folds)."""
    overrides: tuple
    values: dict[str, list[float]]

    def mean(self, metric: str) -> float:
        return sum(self.values[metric]) / len(self.values[metric])

    def std(self, metric: str) -> float | None:
        """Sample standard deviation over runs (None for a single run)."""
        values = self.values[metric]
        if len(values) < 2:
            return None
        mean = self.mean(metric)
        return math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1))


def summarize(rows: list[dict], points: list[Point], metrics: Sequence[str]) -> list[GroupSummary]:
    """Groups the finished points' result rows (same order as `points`) by `group_key`,
    keeping the sweep's order of first appearance."""
    groups: dict[tuple, GroupSummary] = {}
    for point, row in zip(points, rows):
        key = group_key(point)
        summary = groups.setdefault(key, GroupSummary(key, {metric: [] for metric in metrics}))
        for metric in metrics:
            if row.get(metric) is not None:
                summary.values[metric].append(float(row[metric]))
    return [summary for summary in groups.values() if all(summary.values[m] for m in metrics)]


def markdown_table(summaries: list[GroupSummary], metrics: Sequence[str]) -> str:
    """`| overrides... | metric (mean +- std) ... | runs |`, one line per group."""
    if not summaries:
        return "(no finished points)\n"
    keys = list(dict.fromkeys(key for summary in summaries for key, _ in summary.overrides))
    header = "| " + " | ".join([*keys, *metrics, "runs"]) + " |"
    lines = [header, "|" + "---|" * (len(keys) + len(metrics) + 1)]
    for summary in summaries:
        overrides = dict(summary.overrides)
        cells = [overrides.get(key, "") for key in keys]
        for metric in metrics:
            std = summary.std(metric)
            mean = summary.mean(metric)
            digits = 1 if abs(mean) >= 10 else 4  # seconds and such; metrics in [0, 1]
            cells.append(f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}"))
        cells.append(str(len(summary.values[metrics[0]])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

