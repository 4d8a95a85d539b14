"""Ablation sweeps: declarations (retina_jax/sweep.py) and the runner (scripts/ablate.py)."""
import csv
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from retina_jax import sweep

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def test_product_and_zip_build_the_declared_points():
    models = sweep.zip_axes(sweep.axis("model.name", ["unet", "hourglass"]),
                            sweep.axis("model.features", [16, 4]))
    points = sweep.product(models, sweep.axis("seed", [0, 1]))
    assert points == [{"model.name": "unet", "model.features": 16, "seed": 0},
                      {"model.name": "unet", "model.features": 16, "seed": 1},
                      {"model.name": "hourglass", "model.features": 4, "seed": 0},
                      {"model.name": "hourglass", "model.features": 4, "seed": 1}]


@pytest.mark.parametrize("build, message", [
    (lambda: sweep.zip_axes(sweep.axis("a", [1, 2]), sweep.axis("b", [1])), "equal length"),
    (lambda: sweep.product(sweep.axis("a", [1]), sweep.axis("a", [2])), r"both set \['a'\]"),
    (lambda: sweep.axis("a", []), "no values"),
])
def test_bad_declarations_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_point_names_and_commands():
    point = {"augment.crop_size": (32, 32), "input.gamma": 1 / 1.2, "model.name": "unet"}
    assert sweep.point_name(point) == "augment.crop_size=_32,32_,input.gamma=0.8333,model.name=unet"
    assert sweep.command("configs/drive.py", Path("/w"), point, {"train.num_steps": 5}) == [
        "python", "-m", "retina_jax.main", "--config=configs/drive.py", "--workdir=/w",
        "--config.train.num_steps=5", "--config.augment.crop_size=(32,32)",
        f"--config.input.gamma={1 / 1.2!r}", "--config.model.name=unet"]
    assert sweep.format_value((7,)) == "(7,)"


def test_summary_is_mean_and_sample_std_over_seeds():
    points = sweep.product(sweep.axis("loss", ["bce", "dice"]), sweep.axis("seed", [0, 1]))
    rows = [{"dice": 0.8}, {"dice": 0.9}, {"dice": 0.7}, {"dice": None}]
    bce, dice = sweep.summarize(rows, points, ["dice"])
    assert bce.overrides == (("loss", "bce"),)
    assert bce.mean("dice") == pytest.approx(0.85)
    assert bce.std("dice") == pytest.approx(math.sqrt(0.005))
    assert dice.values == {"dice": [0.7]} and dice.std("dice") is None
    table = sweep.markdown_table([bce, dice], ["dice"])
    assert table.splitlines() == ["| loss | dice | runs |", "|---|---|---|",
                                  "| bce | 0.8500 ± 0.0707 | 2 |", "| dice | 0.7000 | 1 |"]


def test_folds_and_seeds_replicate_a_setting_rather_than_vary_it():
    points = sweep.product(sweep.axis("model.name", ["unet"]), sweep.axis("seed", [0, 1]),
                           sweep.axis("dataset.cross_validation.fold", [0, 1]))
    rows = [{"auc_roc": value} for value in (0.97, 0.98, 0.96, 0.99)]
    (summary,) = sweep.summarize(rows, points, ["auc_roc"])
    assert summary.overrides == (("model.name", "unet"),)
    assert summary.mean("auc_roc") == pytest.approx(0.975) and len(summary.values["auc_roc"]) == 4


SMOKE_SWEEP = '''
from retina_jax import sweep

CONFIG = "configs/vessels.py:smoke"
BASE_OVERRIDES = {"train.num_steps": 2, "train.eval_every": 2, "augment.crop_size": (32, 32)}
METRICS = ("dice", "auc_roc")


def get_sweep():
    return sweep.product(sweep.axis("model.name", ["unet"]), sweep.axis("seed", [0, 1]))
'''


def run_ablate(sweep_file: Path, root: Path, *flags: str) -> str:
    completed = subprocess.run(
        [sys.executable, "scripts/ablate.py", f"--sweep={sweep_file}", f"--root={root}", *flags],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout + completed.stderr


@pytest.mark.slow
def test_runner_runs_skips_resumes_and_collects(tmp_path):
    sweep_file = tmp_path / "smoke_sweep.py"
    sweep_file.write_text(textwrap.dedent(SMOKE_SWEEP))
    root = tmp_path / "runs"
    printed = run_ablate(sweep_file, root, "--print_commands")
    assert printed.count("-m retina_jax.main") == 2 and "'--config.augment.crop_size=(32,32)'" in printed

    run_ablate(sweep_file, root)
    with open(root / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["seed"] for row in rows] == ["0", "1"]
    assert all(0.0 <= float(row["dice"]) <= 1.0 and row["step"] == "2" for row in rows)
    table = (root / "results.md").read_text().splitlines()
    assert table[0] == "| model.name | dice | auc_roc | runs |"
    assert table[2].startswith("| unet | ") and table[2].endswith(" | 2 |") and "±" in table[2]
    assert (root / "results.png").stat().st_size > 0

    # A finished point is skipped; one that lost its final metrics (interrupted after its last
    # checkpoint) is run again, resuming from that checkpoint rather than from step 0.
    seed1 = root / "model.name=unet,seed=1"
    (seed1 / sweep.FINAL_METRICS).unlink()
    log = run_ablate(sweep_file, root)
    assert "model.name=unet,seed=0: finished, skipped" in log
    assert "model.name=unet,seed=1: running" in log and "Resuming from step 2" in log
    assert sweep.is_finished(seed1)
    with open(root / "results.csv") as f:
        assert [row["dice"] for row in csv.DictReader(f)] == [row["dice"] for row in rows]
