import numpy as np
import pytest

from hybridllm.evaluate.metrics import apgr, evaluate_scores, quality_curve, random_curve, summarize


def test_curve_hand_computed():
    # 4 queries; gains qs-ql = [+1, 0, -1, 0]; scores rank them q0 > q1 > q2 > q3
    qs = np.array([1.0, 1.0, 0.0, 0.0])
    ql = np.array([0.0, 1.0, 1.0, 0.0])
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    curve = quality_curve(scores, qs, ql)
    # k=0: all large = 0.5; k=1: +1 -> 0.75; k=2: 0.75; k=3: -1 -> 0.5; k=4: 0.5
    assert curve.tolist() == pytest.approx([0.5, 0.75, 0.75, 0.5, 0.5])
    s = summarize(curve, q_small=0.5, q_large=0.5)
    assert s.apgr is None  # no gap between the models: APGR undefined


def test_summaries_hand_computed():
    qs = np.array([1.0, 0.0, 0.0, 1.0, 0.0])
    ql = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    scores = np.array([0.9, 0.1, 0.2, 0.8, 0.7])
    curve = quality_curve(scores, qs, ql)
    # order: q0 (0), q3 (0), q4 (0), q2 (-1), q1 (-1): Q = .8 .8 .8 .8 .6 .4
    assert curve.tolist() == pytest.approx([0.8, 0.8, 0.8, 0.8, 0.6, 0.4])
    s = summarize(curve, q_small=0.4, q_large=0.8)
    # CA 10% -> k=ceil(0.5)=1 -> QD 0; CA 60% -> k=3 -> QD 0
    assert s.quality_drop_at_cost_advantage == {"10": 0.0, "20": 0.0, "40": 0.0, "60": 0.0}
    # QD <= 0 reachable up to k=3 -> 60%; QD 25% at k=4 exceeds 5%
    assert s.cost_advantage_at_quality_drop == {"0": 60.0, "0.5": 60.0, "1": 60.0, "2": 60.0, "5": 60.0}
    # area under Q vs large share: curve reversed over share 0..1 with step 0.2
    area = np.trapezoid([0.4, 0.6, 0.8, 0.8, 0.8, 0.8], dx=0.2)
    assert s.apgr == pytest.approx((area - 0.4) / 0.4)


def test_quality_drop_sign_and_ceil():
    qs = np.array([0.0, 0.0, 0.0])
    ql = np.array([1.0, 1.0, 1.0])
    curve = quality_curve(np.array([0.3, 0.2, 0.1]), qs, ql)
    s = summarize(curve, 0.0, 1.0)
    # CA 10% of 3 -> k=ceil(0.3)=1 -> QD 33.33%
    assert s.quality_drop_at_cost_advantage["10"] == pytest.approx(100 / 3)
    assert s.cost_advantage_at_quality_drop["5"] == 0.0


def test_random_apgr_is_half_and_random_scores_average_half():
    rng = np.random.default_rng(0)
    qs = rng.integers(0, 2, 500).astype(float)
    ql = np.maximum(qs, rng.integers(0, 2, 500)).astype(float)
    assert apgr(random_curve(qs, ql), qs.mean(), ql.mean()) == pytest.approx(0.5)
    vals = [apgr(quality_curve(rng.random(500), qs, ql), qs.mean(), ql.mean()) for _ in range(200)]
    assert np.mean(vals) == pytest.approx(0.5, abs=0.01)


def test_oracle_is_an_upper_bound_and_ties_average():
    rng = np.random.default_rng(1)
    qs = rng.random(200) * 0.8
    ql = rng.random(200) * 0.5 + 0.5  # APGR is normalised by Q_L - Q_S: the large model must be better
    rep = evaluate_scores(rng.random(200), qs, ql)
    assert rep["oracle"]["apgr"] >= rep["router"]["apgr"]
    # a constant score is one tied block: its curve equals the random curve exactly
    const = quality_curve(np.zeros(200), qs, ql)
    assert const == pytest.approx(random_curve(qs, ql))


def test_evaluate_scores_shape():
    rep = evaluate_scores(np.array([0.2, 0.9, 0.5]), np.array([0.0, 1.0, 1.0]), np.array([1.0, 1.0, 0.0]))
    assert set(rep) == {"n", "Q_small", "Q_large", "router", "random", "oracle"}
    for name in ("router", "random", "oracle"):
        assert set(rep[name]["quality_drop_at_cost_advantage"]) == {"10", "20", "40", "60"}
        assert set(rep[name]["cost_advantage_at_quality_drop"]) == {"0", "0.5", "1", "2", "5"}
    assert len(rep["router"]["curve"]["quality"]) == 4
