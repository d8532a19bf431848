import numpy as np
import pytest

from hybridllm.routing.knob import point_for_cost_advantage, point_for_quality_drop, resolve
from hybridllm.routing.policy import NEVER, CalibrationError, calibration_table


def realised(scores, qs, ql, thr):
    """What routing with a threshold actually does on the data: (CA %, QD %)."""
    small = scores >= thr
    q = np.where(small, qs, ql).mean()
    return small.mean() * 100, (ql.mean() - q) / abs(ql.mean()) * 100


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    n = 800
    qs = (rng.random(n) < 0.55).astype(float)
    ql = np.maximum(qs, (rng.random(n) < 0.7).astype(float))
    # a noisy but informative score with many ties (rounded)
    scores = np.round(np.clip(0.5 + 0.3 * (qs - ql) + rng.normal(0, 0.25, n), 0, 1), 2)
    return scores, qs, ql


@pytest.mark.parametrize("target", [0.0, 0.5, 1.0, 2.0, 5.0, 10.0])
def test_quality_drop_target_is_met_and_tight(data, target):
    scores, qs, ql = data
    table = calibration_table(scores, qs, ql)
    point = point_for_quality_drop(table, target)
    ca, qd = realised(scores, qs, ql, point["threshold"])
    assert qd <= target + 1e-9
    assert ca == pytest.approx(point["cost_advantage"])
    # no achievable threshold gives more small-model traffic within the target
    for t in np.unique(scores):
        ca_t, qd_t = realised(scores, qs, ql, t)
        if qd_t <= target + 1e-9:
            assert ca_t <= ca + 1e-9


@pytest.mark.parametrize("target", [10, 25, 40, 60, 90])
def test_cost_advantage_target_is_hit_closely(data, target):
    scores, qs, ql = data
    table = calibration_table(scores, qs, ql)
    point = point_for_cost_advantage(table, target)
    ca, _ = realised(scores, qs, ql, point["threshold"])
    gaps = [abs(realised(scores, qs, ql, t)[0] - target) for t in np.unique(scores)]
    assert abs(ca - target) <= min(gaps) + 1e-9


def test_route_nothing_row_and_knob_resolution(data):
    scores, qs, ql = data
    table = calibration_table(scores, qs, ql)
    assert table[0] == {
        "threshold": NEVER, "cost": 100.0, "cost_advantage": 0.0, "quality_drop": 0.0, "shares": [0.0, 100.0]
    }  # fmt: skip
    default = {"kind": "max_quality_drop", "value": 1.0}
    thr, why = resolve(table, default)
    assert why.startswith("default") and thr == point_for_quality_drop(table, 1.0)["threshold"]
    assert resolve(table, default, threshold=0.3) == (0.3, "threshold=0.3")
    with pytest.raises(CalibrationError, match="at most one"):
        resolve(table, default, threshold=0.3, cost_advantage=10)
    with pytest.raises(CalibrationError, match=r"0\.\.100"):
        resolve(table, default, cost_advantage=120)
    with pytest.raises(CalibrationError, match=">= 0"):
        resolve(table, default, max_quality_drop=-1)
    # a pair trained without costs has no budget knob: spend against costs that stand for the order
    with pytest.raises(CalibrationError, match="budget needs the models' costs"):
        resolve(table, default, budget=50, costs_given=False)
