"""The quality-minus-cost rule as threshold scores, the per-model maps, the choice made on
validation, format-4 artifacts and the memory's uniform weights (fast: no training)."""

import json

import numpy as np
import pytest

from hybridllm.model.artifact import ArtifactError, load_config, needed_version, save_artifact
from hybridllm.model.select import COMBOS, MIXES, choose_policy, isotonic_map, routing_metric
from hybridllm.routing.policy import Fleet, choose, sweep
from hybridllm.routing.value import Policy, ScoreMap, lambda_of, threshold_of, value_scores


def _fleet(rng, m: int, ref: int) -> Fleet:
    return Fleet(tuple(f"m{i}" for i in range(m)), tuple(sorted(rng.uniform(0.1, 10, m))), f"m{ref}")


def _argmax_rule(gap: np.ndarray, fleet: Fleet, lam: float) -> np.ndarray:
    k = fleet.ref
    c = np.asarray(fleet.costs[: k + 1]) / fleet.costs[k]
    return np.argmax(np.c_[gap, np.zeros(len(gap))] - lam * c, axis=1)


@pytest.mark.parametrize("seed", range(6))
def test_the_threshold_on_value_scores_is_the_argmax_of_quality_minus_cost(seed):
    """For every threshold t, "the cheapest model whose value score is at least t" is the model
    with the highest predicted gap minus λ·cost at λ = scale·(1/t − 1), for any fleet."""
    rng = np.random.default_rng(seed)
    m = int(rng.integers(2, 9))
    fleet = _fleet(rng, m, int(rng.integers(1, m)))
    gap = rng.normal(-0.1, 0.2, size=(200, fleet.ref))
    scale = float(rng.uniform(0.05, 2))
    s = value_scores(gap, fleet, scale)
    assert s.shape == gap.shape and s.min() >= 0 and s.max() <= 1
    for t in np.r_[rng.uniform(0.001, 1, 30), 1.0]:
        lam = lambda_of(float(t), scale)
        assert threshold_of(lam, scale) == pytest.approx(t)
        np.testing.assert_array_equal(choose(s, fleet, float(t)), _argmax_rule(gap, fleet, lam))
    # the calibration sweep over these scores is the rule's own curve: each row's shares are its decisions
    q = rng.uniform(size=(200, m))
    for row in sweep(s, q, fleet)[1::25]:
        picks = choose(s, fleet, row["threshold"])
        shares = np.bincount(picks, minlength=m) / len(picks) * 100
        np.testing.assert_allclose(shares, row["shares"], atol=1e-3)


def test_with_two_models_the_rule_is_a_threshold_on_the_score():
    """One scored model: the value score rises with the predicted gap, so it ranks queries as the
    head does; the default policy (every artifact of formats 1-3) passes scores through untouched."""
    fleet = Fleet(("s", "l"), (1.0, 4.0), "l")
    gap = np.linspace(-1, 0.2, 400)[:, None]
    s = value_scores(gap, fleet, 0.3)[:, 0]
    assert np.all(np.diff(s) >= 0) and s[-1] == 1.0 and len(np.unique(s)) > 300
    raw = np.random.default_rng(0).uniform(size=50).astype(np.float32)
    assert Policy().decision_scores(raw, fleet) is raw
    # raw scores under the value rule: the gap p - 1, same order
    v = Policy("value", "raw", (), 0.3).decision_scores(raw, fleet)
    assert v.shape == raw.shape and v.dtype == np.float32
    np.testing.assert_array_equal(np.argsort(v, kind="stable"), np.argsort(raw, kind="stable"))


def test_isotonic_map_is_the_pool_adjacent_violators_fit_and_keeps_the_order():
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(3)
    p = rng.uniform(size=600)
    y = (rng.uniform(size=600) < p**2).astype(float) - 0.3
    mp = isotonic_map(p, y)
    fit = IsotonicRegression().fit(p, y).predict(p)
    np.testing.assert_allclose(sorted(set(np.round(fit, 9))), np.round(mp.y, 9))  # the blocks' means
    assert all(b > a for a, b in zip(mp.y, mp.y[1:], strict=False))  # equal means pooled: strictly rising
    grid = np.linspace(-0.5, 1.5, 2001)
    assert np.all(np.diff(mp(grid)) > 0)  # every two scores keep their order, beyond the fitted range too
    assert ScoreMap.from_dict(json.loads(json.dumps(mp.to_dict()))) == mp


def _scaled_fleet_case(seed: int = 0):
    """Three models whose head scores have unlike scales: the middle model's predicted chance of
    being good enough is squashed near 1 whatever its quality, which misleads the cheapest-first
    threshold and a raw comparison; mapped per model on validation they mean the same again."""
    rng = np.random.default_rng(seed)
    n = 4000
    a = rng.uniform(size=(n, 2))  # each cheaper model's chance of answering right
    q = np.c_[(rng.uniform(size=(n, 2)) < a).astype(float), (rng.uniform(size=n) < 0.8).astype(float)]
    p = np.c_[a[:, 0] * 0.8, 0.9 + 0.1 * a[:, 1]]  # model 1's score: squashed into 0.9..1
    y = (q[:, :2] >= q[:, 2:]).astype(float)
    return Fleet(("a", "b", "ref"), (1.0, 1.2, 10.0), "ref"), p, y, q


def test_the_choice_on_validation_keeps_the_best_and_names_the_runner_up():
    fleet, p, y, q = _scaled_fleet_case()
    p_mem = np.clip(p + np.random.default_rng(1).normal(0, 0.05, p.shape), 0, 1)
    seen: list[str] = []
    best, runner, policy, tried = choose_policy(p, p_mem, y, q, fleet, progress=seen.append)
    assert len(tried) == len(MIXES) * len(COMBOS)
    scores = sorted((t["val_score"] for t in tried), reverse=True)
    assert round(best.score, 6) == scores[0] and runner is not None and round(runner.score, 6) == scores[1]
    assert (policy.rule, policy.kind) == (best.rule, best.kind)
    assert best.kind == "calibrated" and len(policy.maps) == 2  # unlike scales: calibrated wins
    raw = next(t for t in tried if (t["rule"], t["scores"], t["memory_mix"]) == ("threshold", "raw", 0.0))
    assert best.score > raw["val_score"] + 0.005
    assert "routing chosen on validation" in seen[0] and "runner-up" in seen[0]
    # one scored model: the rules and maps rank alike, so only the memory weight is chosen
    pair = Fleet(("a", "ref"), (1.0, 10.0), "ref")
    b1, _, pol1, tried1 = choose_policy(p[:, 0], p_mem[:, 0], y[:, 0], q[:, [0, 2]], pair)
    assert len(tried1) == len(MIXES) and pol1.passthrough and b1.rule == "threshold"


def test_calibrated_value_routing_beats_the_raw_threshold_on_held_out_rows():
    """Fitted on one draw and measured on another: the chosen policy's AIQ is above the threshold on
    raw scores (what formats 1-3 route by) on rows it has not seen."""
    fleet, p, y, q = _scaled_fleet_case(0)
    _, _, policy, _ = choose_policy(p, None, y, q, fleet)
    _, p2, _, q2 = _scaled_fleet_case(1)
    aiq = routing_metric(fleet, q2)
    assert aiq(policy.decision_scores(p2, fleet)) > aiq(p2) + 0.005


def _head(rng, width: int, k: int):
    from hybridllm.model.head import HeadWeights

    e, h = 2, 8
    return HeadWeights(
        w1=rng.normal(0, 0.2, size=(e, width, h)), b1=rng.normal(size=(e, h)), w2=rng.normal(size=(e, h, k)),
        b2=rng.normal(size=(e, k)), mu=np.zeros(width), sd=np.ones(width),
    )  # fmt: skip


def _value_artifact(tmp_path, rng):
    """A 4-model router (static encoder) routing by calibrated quality minus λ·cost."""
    from hybridllm.features.featurize import featurize, make_encoder

    fleet = Fleet(("a", "b", "c", "ref"), (1.0, 2.0, 3.0, 10.0), "ref")
    enc = make_encoder("static")
    prompts = [f"question {i}: what is {i} + {i * 7}?" for i in range(60)]
    x = featurize(enc, prompts, ["log_tokens"])
    head = _head(rng, x.shape[1], 3)
    p = head.predict(x)
    maps = tuple(isotonic_map(p[:, j], rng.normal(-0.1, 0.1, 60) + p[:, j] / 5) for j in range(3))
    policy = Policy("value", "calibrated", maps, 0.05)
    table = sweep(policy.decision_scores(p, fleet), rng.uniform(size=(60, 4)), fleet)
    cfg = {
        "small": "a", "large": "ref", "fleet": fleet.to_dict(), "candidates": ["a", "b", "c"],
        "encoder": {"name": enc.name, "spec": "static", "max_length": 256}, "head": {"extra": ["log_tokens"]},
        "calibration": table, "default_operating_point": {"kind": "max_quality_drop", "value": 1.0},
        "policy": policy.to_dict(),
    }  # fmt: skip
    out = save_artifact(tmp_path / "r", cfg, head.tensors())
    return out, fleet, policy, head, prompts, x


def test_a_format_4_router_routes_by_quality_minus_cost(tmp_path, cache_env):
    from hybridllm.model.router import Router

    rng = np.random.default_rng(5)
    out, fleet, policy, head, prompts, x = _value_artifact(tmp_path, rng)
    assert json.loads((out / "config.json").read_text())["format_version"] == 4
    router = Router(out)
    assert router.policy == policy
    gaps = policy.gaps(head.predict(x))
    np.testing.assert_allclose(router.expected_gaps(prompts), gaps, atol=1e-6)
    s = router.score(prompts)
    np.testing.assert_allclose(s, policy.decision_scores(head.predict(x), fleet), atol=1e-6)
    for knob in ({"max_quality_drop": 2.0}, {"cost_advantage": 50.0}, {"budget": 40.0}, {"threshold": 0.4}):
        decisions = router.route_batch(prompts, **knob)
        lam = lambda_of(decisions[0].threshold, policy.scale)
        # each query's model has the highest gap minus λ·cost (to float32 rounding: a table threshold is
        # some query's own score, where two models tie)
        c = np.asarray(fleet.costs) / fleet.costs[fleet.ref]
        value = np.c_[gaps, np.zeros(len(gaps))] - lam * c
        got = [fleet.models.index(d.model) for d in decisions]
        np.testing.assert_allclose(value[np.arange(len(got)), got], value.max(axis=1), rtol=0, atol=1e-5)
        assert len(set(got)) > 1 or knob == {"max_quality_drop": 2.0}
        assert router.route(prompts[3], **knob).model == decisions[3].model  # one prompt as in a batch


@pytest.mark.parametrize(
    "edit,expected",
    [
        (lambda p: {**p, "rule": "vibes"}, "field 'policy': 'rule'"),
        (lambda p: {**p, "lambda_scale": -1}, "'lambda_scale'"),
        (lambda p: {**p, "maps": p["maps"][:2]}, "'maps'"),
        (lambda p: {**p, "maps": [{"x": [0.2, 0.1], "y": [0, 1]}] * 3}, "'maps[0]': a score map must rise"),
        (lambda p: {**p, "maps": [{"x": ["a"], "y": [0]}] * 3}, "'maps[0]': expected lists of numbers"),
        (lambda p: "value", "field 'policy': expected an object"),
    ],
)
def test_a_bad_policy_block_is_refused_with_its_field(tmp_path, cache_env, edit, expected):
    out, *_ = _value_artifact(tmp_path, np.random.default_rng(6))
    cfg = json.loads((out / "config.json").read_text())
    cfg["policy"] = edit(cfg["policy"])
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        load_config(out)


def test_formats_1_to_3_load_and_route_by_the_threshold(tmp_path, cache_env):
    """An artifact without a policy (formats 1-3) routes as before; the writer keeps format 3 for a
    router that routes like one, so older readers still load it."""
    from hybridllm.model.router import SHIPPED_ROUTER, Router

    out, *_ = _value_artifact(tmp_path, np.random.default_rng(7))
    cfg = json.loads((out / "config.json").read_text())
    old = {k: v for k, v in cfg.items() if k != "policy"} | {"format_version": 3}
    (out / "config.json").write_text(json.dumps(old))
    r = Router(out)
    assert r.policy.passthrough and r.config["format_version"] == 3
    np.testing.assert_array_equal(
        r.score(["hello", "a longer question"]), r.head_scores(["hello", "a longer question"])
    )
    shipped = Router(SHIPPED_ROUTER)  # version 1 on disk, read in the current form: a plain threshold
    assert shipped.config["format_version"] == 3 and shipped.policy.passthrough
    tensors = {"w1": np.zeros(1)}
    assert needed_version({"policy": {"rule": "threshold", "scores": "raw"}}, tensors) == 3
    assert needed_version({}, tensors) == 3
    assert needed_version({"policy": {"rule": "value", "scores": "raw"}}, tensors) == 4
    assert needed_version({}, {**tensors, "knn_uniform": np.ones(1)}) == 4


def test_memory_member_with_uniform_weights_is_plain_knn():
    from sklearn.neighbors import KNeighborsRegressor

    from hybridllm.model.memory import Memory, fit_memory, recall

    rng = np.random.default_rng(2)
    mem = rng.normal(size=(300, 12)).astype(np.float32)
    y = rng.uniform(size=(300, 2)).astype(np.float32)
    q = rng.normal(size=(40, 12)).astype(np.float32)
    unit = mem / np.linalg.norm(mem, axis=1, keepdims=True)
    got = recall(unit, y, q / np.linalg.norm(q, axis=1, keepdims=True), 25, uniform=True)
    want = KNeighborsRegressor(n_neighbors=25, weights="uniform", metric="cosine").fit(mem, y).predict(q)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # chosen on validation when it is what the metric prefers, and one prompt scores as in a batch
    x_val = np.c_[q, np.zeros(40)].astype(np.float32)
    member, _ = fit_memory(np.c_[mem, np.zeros(300)].astype(np.float32), y, x_val, lambda p: 0.0, 12)
    target = Memory(member.x, member.y, member.mu, member.proj, 50, uniform=True)(x_val)
    member, score = fit_memory(
        np.c_[mem, np.zeros(300)].astype(np.float32), y, x_val, lambda p: -float(np.abs(p - target).mean()), 12
    )
    assert (member.k, member.uniform, score) == (50, True, 0.0)
    one = np.concatenate([member(x_val[i : i + 1]) for i in range(len(x_val))])
    np.testing.assert_allclose(one, member(x_val), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["raw", "calibrated"])
def test_one_prompt_gets_the_scores_it_gets_in_a_batch(kind):
    """A lone decision takes the plain-float path (and all maps in one interpolation): the same
    numbers, bit for bit, as the batch form the calibration table was measured with, for 10 scored
    models and scores beyond the maps' fitted range."""
    rng = np.random.default_rng(11)
    fleet = Fleet(tuple(f"m{i}" for i in range(11)), tuple(float(i + 1) for i in range(11)), "m10")
    p = rng.uniform(size=(2000, 10))
    maps = (
        tuple(isotonic_map(p[:, j], rng.normal(0, 0.3, 2000) + p[:, j] - 1) for j in range(10))
        if kind == "calibrated"
        else ()
    )
    pol = Policy("value", kind, maps, 0.1)
    x = rng.uniform(-0.1, 1.1, size=(1500, 10)).astype(np.float32)
    batch = pol.decision_scores(x, fleet)
    one = np.concatenate([pol.decision_scores(x[i : i + 1], fleet) for i in range(len(x))])
    assert one.dtype == batch.dtype == np.float32
    np.testing.assert_array_equal(one, batch)
    if maps:  # the stacked maps are each map's own
        want = np.stack([m(x[:, j].astype(np.float64)) for j, m in enumerate(maps)], axis=1)
        np.testing.assert_allclose(pol.gaps(x), want, rtol=0, atol=1e-12)


def test_the_live_hold_moves_lambda_as_it_moves_the_threshold():
    """A budget hold fed value scores (what a quality-minus-cost router's score() gives) holds the
    spend as on any scores: the threshold it settles at is a λ, and the requests it routes go to the
    argmax of predicted gap minus that λ·cost."""
    from hybridllm.routing.live import Hold

    rng = np.random.default_rng(4)
    fleet = Fleet(("a", "b", "c", "ref"), (1.0, 3.0, 5.0, 20.0), "ref")
    gap = rng.normal(-0.15, 0.15, size=(6000, 3))
    scale = 0.05
    s = value_scores(gap, fleet, scale)
    cal = sweep(s[:2000], rng.uniform(size=(2000, 4)), fleet)
    hold = Hold("budget", 40.0, fleet, cal)
    for row, g in zip(s[2000:], gap[2000:], strict=True):
        t = hold.threshold
        pick = int(choose(row[None, :], fleet, t)[0])
        assert pick == int(_argmax_rule(g[None, :], fleet, lambda_of(t, scale))[0])
        hold.observe(tuple(row), pick)
    assert hold.realised() == pytest.approx(40.0, abs=5.0)
    assert 0 < lambda_of(hold.threshold, scale) < np.inf
