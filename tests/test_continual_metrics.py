"""Continual metrics from hand-computed score matrices: A_KA, A_ZS, forgetting, BWT, FWT, perplexity signs."""

import json
import math

import numpy as np
import pytest

from fluxforge.continual.metrics import (
    ContinualMetrics,
    MetricsError,
    backward_transfer,
    continual_metrics,
    forgetting_per_task,
    forward_transfer,
    knowledge_accumulation,
    zero_shot_retention,
)

# rows: zero-shot, after task 1, after task 2; columns: task 1, task 2, one held-out domain
ACC3 = [[0.2, 0.3, 0.5],
        [0.8, 0.4, 0.45],
        [0.6, 0.9, 0.4]]
# three tasks and one held-out domain: task 1 peaks after task 2 (0.8), not when it was learned (0.7)
ACC4 = [[0.1, 0.2, 0.3, 0.5],
        [0.7, 0.3, 0.2, 0.5],
        [0.8, 0.6, 0.4, 0.4],
        [0.5, 0.5, 0.9, 0.3]]


def test_three_by_three_by_hand():
    m = continual_metrics(ACC3)
    assert m.num_tasks == 2 and m.num_held_out == 1
    assert math.isnan(m.a_ka_curve[0]) and m.a_ka_curve[1:] == pytest.approx((0.8, 0.75))  # tasks seen so far
    assert m.a_zs_curve == pytest.approx((0.5, 0.45, 0.4))
    assert m.a_ka == pytest.approx(0.75) and m.a_zs == pytest.approx(0.4)
    assert m.geometric_mean == pytest.approx(math.sqrt(0.75 * 0.4))
    assert m.forgetting_per_task == pytest.approx((0.8 - 0.6,))
    assert m.forgetting == pytest.approx(0.2)
    assert m.bwt == pytest.approx(0.6 - 0.8)
    assert m.fwt == pytest.approx(0.4 - 0.3)


def test_four_by_four_by_hand():
    assert knowledge_accumulation(ACC4)[1:] == pytest.approx([0.7, 0.7, (0.5 + 0.5 + 0.9) / 3])
    assert knowledge_accumulation(ACC4, over="all") == pytest.approx([0.2, 0.4, 0.6, 0.6333333333])
    assert zero_shot_retention(ACC4) == pytest.approx([0.5, 0.5, 0.4, 0.3])
    # forgetting uses the best earlier score: task 1 max(0.7, 0.8) - 0.5, task 2 0.6 - 0.5; the last task is not counted
    assert forgetting_per_task(ACC4) == pytest.approx([0.3, 0.1])
    # BWT against the score right after learning: (0.5 - 0.7 + 0.5 - 0.6) / 2
    assert backward_transfer(ACC4) == pytest.approx(-0.15)
    # FWT: score just before training a task minus zero-shot: (0.3 - 0.2 + 0.4 - 0.3) / 2
    assert forward_transfer(ACC4) == pytest.approx(0.1)


def test_fomo_weighting_40_1_and_20_2():
    """methods.md section 8 test 5: A_KA = (40*acc + 1*R@5)/41 and A_ZS = (20*acc + 2*R@5)/22."""
    # task 1 = the 40 classification adaptation datasets (their mean accuracy), task 2 = the retrieval one (R@5);
    # held-out: 20 classification datasets, 2 retrieval datasets
    acc, r5, zs_acc, zs_r5 = 0.62, 0.91, 0.55, 0.73
    matrix = [[0.40, 0.70, 0.60, 0.80],
              [0.65, 0.72, 0.57, 0.76],
              [acc, r5, zs_acc, zs_r5]]
    m = continual_metrics(matrix, counts=[40, 1, 20, 2])
    assert m.a_ka == pytest.approx((40 * acc + 1 * r5) / 41)
    assert m.a_zs == pytest.approx((20 * zs_acc + 2 * zs_r5) / 22)
    assert m.a_zs != pytest.approx((zs_acc + zs_r5) / 2), "the counts change the answer"
    assert m.geometric_mean == pytest.approx(math.sqrt(m.a_ka * m.a_zs))
    assert m.a_zs_curve[0] == pytest.approx((20 * 0.60 + 2 * 0.80) / 22)


def test_perplexity_flips_signs_so_metrics_keep_their_meaning():
    ppl = [[30.0, 40.0, 20.0],
           [10.0, 35.0, 22.0],
           [14.0, 12.0, 25.0]]
    m = continual_metrics(ppl, higher_is_better=False)
    assert m.forgetting == pytest.approx(14.0 - 10.0), "perplexity rose from 10 to 14: forgetting is positive"
    assert m.bwt == pytest.approx(10.0 - 14.0), "later training hurt task 1: negative backward transfer"
    assert m.fwt == pytest.approx(40.0 - 35.0), "task 1 lowered task 2's perplexity before it was trained: positive"
    assert m.a_ka == pytest.approx(13.0) and m.a_zs == pytest.approx(25.0)
    neg = continual_metrics(-np.array(ppl))  # same as treating -perplexity as a higher-is-better score
    assert (m.forgetting, m.bwt, m.fwt) == pytest.approx((neg.forgetting, neg.bwt, neg.fwt))


def test_one_task_has_no_forgetting_and_to_dict_is_json():
    m = ContinualMetrics.compute([[0.1, 0.5], [0.6, 0.4]])
    assert math.isnan(m.forgetting) and math.isnan(m.bwt) and math.isnan(m.fwt)
    d = m.to_dict()
    assert d["forgetting"] is None and d["bwt"] is None and d["a_ka_curve"] == [None, 0.6]
    assert json.loads(json.dumps(d, allow_nan=False))["a_zs"] == pytest.approx(0.4)
    no_held_out = continual_metrics([[0.1, 0.2], [0.5, 0.3], [0.4, 0.6]])
    assert no_held_out.to_dict()["a_zs"] is None and no_held_out.num_held_out == 0


@pytest.mark.parametrize("bad, message", [
    ([], r"the score matrix is empty"),
    ([[]], r"the score matrix is empty"),
    ([[0.1, 0.2], [0.3]], r"ragged: row 0 has 2 columns but rows \[1\] have \[1\]"),
    ([[0.1, 0.2]], r"only the zero-shot row"),
    ([[0.1], [0.2], [0.3]], r"2 trained tasks .* but only 1 columns"),
    ([[0.1, float("nan")], [0.2, 0.3]], r"NaN/infinite cells at \(row, col\) \[\(0, 1\)\]"),
    ([0.1, 0.2], r"a list of rows"),
])
def test_bad_matrices_are_rejected_clearly(bad, message):
    with pytest.raises(MetricsError, match=message):
        continual_metrics(bad)


def test_bad_counts_are_rejected():
    with pytest.raises(MetricsError, match=r"2 counts for 3 columns"):
        continual_metrics(ACC3, counts=[1, 2])
    with pytest.raises(MetricsError, match=r"counts must be positive"):
        continual_metrics(ACC3, counts=[1, 0, 2])
