"""Per-case evaluation: counts per example, rows, the per-case means and the worst/best gallery."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retina_jax import io_utils
from retina_jax.tasks import segmentation


def test_case_counts_hand_computed():
    probabilities = jnp.array([[[0.9, 0.2], [0.6, 0.1]], [[0.1, 0.1], [0.1, 0.7]]])[..., None]
    mask = jnp.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], jnp.float32)[..., None]
    counts = segmentation.case_counts(probabilities, {"mask": mask}, threshold=0.5, num_bins=4)
    assert {key: value.tolist() for key, value in counts.items()} == {
        "tp": [1, 0], "fp": [1, 1], "fn": [1, 0], "tn": [1, 3],
        # bins floor(4 p): case 0's vessel pixels 0.9 -> 3, 0.2 -> 0; background 0.6 -> 2, 0.1 -> 0;
        # case 1 has only background, 0.7 -> 2
        "pos_hist": [[1, 0, 0, 1], [0, 0, 0, 0]], "neg_hist": [[1, 0, 1, 0], [3, 0, 1, 0]]}


def test_case_rows_carry_each_case_auc():
    probabilities = jnp.array([[[0.9, 0.2], [0.6, 0.1]], [[0.1, 0.1], [0.1, 0.7]]])[..., None]
    mask = jnp.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], jnp.float32)[..., None]
    counts = segmentation.case_counts(probabilities, {"mask": mask}, threshold=0.5, num_bins=4)
    rows = segmentation.case_rows(jax.device_get(counts), {
        "valid": np.ones(2), "labelled": np.ones(2), "id": np.array([b"a", b"b"])})
    # Case a: 0.9 beats both background pixels, 0.2 ties 0.1 (one bin) and loses to 0.6.
    assert rows[0]["auc_roc"] == pytest.approx(2.5 / 4)
    # From the top bin down: 0.9 (recall 1/2, precision 1), 0.6 (precision 1/2), then bin 0
    # with 0.2 and 0.1 (recall 1, precision 2/4).
    assert rows[0]["auc_pr"] == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    assert rows[1]["auc_roc"] is None and rows[1]["auc_pr"] is None  # no vessel pixel


def rows_for(tp, fp, fn, tn, *, valid=None, labelled=None, ids=None):
    count = len(tp)
    counts = {"tp": np.array(tp), "fp": np.array(fp), "fn": np.array(fn), "tn": np.array(tn),
              # two bins at threshold 0.5: below it the misses / true negatives, above it the hits
              "pos_hist": np.stack([fn, tp], axis=1), "neg_hist": np.stack([tn, fp], axis=1)}
    info = {"valid": np.ones(count) if valid is None else np.array(valid, float),
            "labelled": np.ones(count) if labelled is None else np.array(labelled, float),
            "id": np.array([f"case{i}".encode() for i in range(count)] if ids is None else ids)}
    return segmentation.case_rows(counts, info)


def test_case_rows_skip_padding_and_score_by_the_empty_rule():
    rows = rows_for([3, 0, 0, 9], [1, 0, 2, 9], [0, 0, 0, 9], [4, 8, 6, 9], valid=[1, 1, 1, 0])
    assert [row["id"] for row in rows] == ["case0", "case1", "case2"]
    assert rows[0]["dice"] == pytest.approx(6 / 7) and rows[0]["iou"] == pytest.approx(3 / 4)
    assert rows[0]["gt_pixels"] == 3 and rows[0]["predicted_pixels"] == 4
    assert rows[1]["dice"] == 1.0 and rows[1]["precision"] == 1.0  # nothing to find, nothing found
    assert rows[2]["dice"] == 0.0 and rows[2]["recall"] == 0.0     # nothing to find, 2 px found
    assert rows[0]["auc_roc"] == pytest.approx(3 * (4 + 0.5) / (3 * 5)) and rows[0]["auc_pr"] == 0.75
    assert rows[1]["auc_roc"] is None and rows[2]["auc_pr"] is None


def test_unlabelled_rows_carry_only_the_prediction_size():
    rows = rows_for([0], [5], [0], [3], labelled=[0])
    assert rows == [{"id": "case0", "labelled": False, "predicted_pixels": 5}]


def test_summary_per_case_means_differ_from_the_pooled_dice():
    rows = rows_for([90, 1, 0], [10, 0, 0], [0, 9, 0], [0, 0, 10])
    counts = {"tp": 91, "fp": 10, "fn": 9, "tn": 10, "pos_hist": np.zeros(4), "neg_hist": np.zeros(4),
              "num_examples": 3, "num_labelled": 3}
    summary = segmentation.summarize(counts, rows)
    assert summary["dice"] == pytest.approx(182 / 201)  # pooled over the split
    per_case = [180 / 190, 2 / 11, 1.0]
    assert summary["dice_per_case_mean"] == pytest.approx(np.mean(per_case))
    assert summary["dice_per_case_mean_positive"] == pytest.approx(np.mean(per_case[:2]))
    assert summary["iou_per_case_mean"] == pytest.approx(np.mean([0.9, 0.1, 1.0]))
    # Case 0: 90 hits over 10 false alarms in the upper bin -> 0.5; case 1: 1 hit and 9 misses
    # against no background -> undefined; case 2: no vessel -> undefined.
    assert summary["auc_roc_per_case_mean"] == pytest.approx(0.5)


def test_gallery_keeps_worst_and_best_with_bounded_memory():
    gallery = segmentation.Gallery(4)
    dice_of_case = [0.5, 0.9, 0.1, 0.7, 0.3, 1.0, 0.8]
    for index, dice in enumerate(dice_of_case):
        row = {"id": f"c{index}", "labelled": True, "dice": dice, "fp": 1, "fn": 1,
               "gt_pixels": 0 if index == 5 else 10, "predicted_pixels": 10}
        gallery.add(row, np.full((2, 2, 1), index), np.zeros((2, 2, 1)), np.zeros((2, 2, 1)))
        assert len(gallery._worst) <= 2 and len(gallery._best) <= 2
    shown = gallery.cases()
    ids = [case[0]["id"] for _, case in shown]
    assert ids == ["c2", "c4", "c1", "c6"]  # c5 is perfect but has no foreground to show
    assert shown[0][0].startswith("worst 1: c2 dice 0.100")
    assert shown[2][0].startswith("best 1: c1 dice 0.900")
    assert shown[0][1][1][0, 0, 0] == 2  # the image travels with its row


def test_gallery_shows_a_case_once_when_it_is_both_worst_and_best():
    gallery = segmentation.Gallery(4)
    row = {"id": "only", "labelled": True, "dice": 0.4, "fp": 1, "fn": 1, "gt_pixels": 5,
           "predicted_pixels": 3}
    gallery.add(row, *(np.zeros((2, 2, 1)),) * 3)
    assert [caption.split(":")[0] for caption, _ in gallery.cases()] == ["worst 1"]


def test_write_csv_is_complete_and_atomic(tmp_path):
    rows = rows_for([3, 0], [1, 0], [0, 0], [4, 8])
    io_utils.write_csv(tmp_path / "per_case.csv", rows, ["id", "dice", "gt_pixels"])
    lines = (tmp_path / "per_case.csv").read_text().splitlines()
    assert lines[0] == "id,dice,gt_pixels"
    assert lines[2] == "case1,1.0,0"
    assert [path.name for path in tmp_path.iterdir()] == ["per_case.csv"]
