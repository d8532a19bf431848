import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridllm.stages.labels import (
    candidate_margins,
    det_labels,
    make_labels,
    mean_abs_pairwise_diff,
    prob_labels,
    trans_labels,
)


def test_det_uses_first_sample_only():
    q = [([1.0, 0.0], [0.0, 1.0]), ([0.0, 1.0], [1.0, 0.0]), ([0.5], [0.5])]
    assert det_labels(q).tolist() == [1.0, 0.0, 1.0]


def test_prob_hand_computed():
    # s = [0.2, 0.8], l = [0.5, 0.1, 0.9]: pairs s>=l: (0.2,0.1), (0.8,0.5), (0.8,0.1) -> 3/6
    q = [([0.2, 0.8], [0.5, 0.1, 0.9]), ([1.0], [0.0, 1.0]), ([0.0, 0.0], [1.0, 1.0])]
    assert prob_labels(q).tolist() == pytest.approx([0.5, 1.0, 0.0])


def test_trans_at_given_margin_hand_computed():
    # t = 0.3: 1[s >= l - 0.3]; s=[0.2,0.8], l=[0.5,0.1,0.9]: 0.2>=0.2 ok, 0.2>=-0.2 ok, 0.2>=0.6 no,
    # 0.8 >= all three -> 5/6
    res = trans_labels([([0.2, 0.8], [0.5, 0.1, 0.9])], t=0.3)
    assert res.labels.tolist() == pytest.approx([5 / 6])
    assert res.t_star == 0.3


def brute_spread(y):
    y = np.asarray(y)
    return float(np.abs(y[:, None] - y[None, :]).sum() / len(y) ** 2)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=60))
def test_spread_matches_quadratic_definition(y):
    assert mean_abs_pairwise_diff(np.array(y)) == pytest.approx(brute_spread(y), abs=1e-12)


def test_t_star_on_constructed_data():
    # The small model is always exactly 0.25 worse than the large one, except on half of the
    # queries where it is 0.75 worse. At t=0 every label is 0 (spread 0); at t=0.25 half the
    # labels are 1 and half 0 (spread 0.5, the maximum); at t>=0.75 all are 1 again.
    q = [([0.5], [0.75])] * 10 + [([0.0], [0.75])] * 10
    res = trans_labels(q)
    assert res.t_star == pytest.approx(0.25)
    assert res.spread == pytest.approx(0.5)
    assert sorted(res.labels.tolist()) == [0.0] * 10 + [1.0] * 10


def test_t_star_is_exact_argmax_over_a_fine_grid():
    rng = np.random.default_rng(3)
    q = [(rng.uniform(0, 0.6, 3).tolist(), rng.uniform(0.3, 1.0, 4).tolist()) for _ in range(40)]
    res = trans_labels(q)
    grid = np.linspace(0, 1.2, 2401)
    best_grid = max(brute_spread(trans_labels(q, t=float(t)).labels) for t in grid)
    assert res.spread >= best_grid - 1e-12
    assert brute_spread(res.labels) == pytest.approx(res.spread)


def test_trans_ties_prefer_smallest_margin():
    # binary single samples: t=0 already separates; every t in (0,1) gives the same labels
    q = [([1.0], [1.0]), ([0.0], [1.0]), ([1.0], [0.0]), ([0.0], [0.0])]
    res = trans_labels(q)
    assert res.t_star == 0.0
    assert res.labels.tolist() == [1.0, 0.0, 1.0, 1.0]


def test_candidate_margins_cover_all_breakpoints():
    pairs = [(np.array([0.1, 0.4]), np.array([0.3, 0.9]))]
    m = candidate_margins(pairs)
    expected = sorted({0.0} | {b - a for a, b in itertools.product([0.1, 0.4], [0.3, 0.9]) if b - a > 0})
    assert m.tolist() == pytest.approx(expected)


def test_make_labels_rejects_unknown():
    with pytest.raises(ValueError, match="unknown label type"):
        make_labels([([1.0], [0.0])], "nope")
