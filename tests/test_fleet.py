"""Routing among N models: the policy's calibration sweep against brute force, the two-model special
case equal to the two-model router, and a three-model router on real MMLU-Pro outcomes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridllm import Router, TrainOptions, read_table, train_router
from hybridllm.model.artifact import ArtifactError
from hybridllm.model.fit import fit_router
from hybridllm.model.fleet_rows import quality_matrix
from hybridllm.model.head import HeadConfig
from hybridllm.routing.knob import resolve
from hybridllm.routing.policy import Fleet, choose, sweep

from .conftest import LARGE, SMALL, THREE, THREE_COSTS


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 12),
    k=st.integers(1, 3),
    seed=st.integers(0, 10_000),
    ties=st.booleans(),
)
def test_sweep_equals_brute_force(n, k, seed, ties):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(n, k)) / 4 if ties else rng.random((n, k))
    quality = rng.integers(0, 2, size=(n, k + 1)).astype(float)
    fleet = Fleet(tuple(f"m{i}" for i in range(k + 1)), tuple(float(2**i) for i in range(k + 1)), f"m{k}")
    costs = np.array(fleet.costs)
    for row in sweep(scores, quality, fleet):
        pick = choose(scores, fleet, row["threshold"])
        cost = costs[pick].mean() / costs[k] * 100
        q = quality[np.arange(n), pick].mean()
        q_ref = quality[:, k].mean()
        qd = (q_ref - q) / (abs(q_ref) if q_ref else 1.0) * 100
        assert row["cost"] == pytest.approx(cost, abs=1e-4) and row["quality_drop"] == pytest.approx(qd, abs=1e-4)
        shares = np.bincount(pick, minlength=k + 1) / n * 100
        assert row["shares"] == pytest.approx(shares.tolist(), abs=1e-3)


@settings(max_examples=80, deadline=None)
@given(
    k=st.integers(1, 4),
    ref_at=st.integers(0, 4),
    row=st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, float("nan")]), min_size=4, max_size=4),
    threshold=st.sampled_from([0.0, 0.25, 0.5, 0.9, 1.0, float("inf")]),
)
def test_the_proxys_decision_is_the_policys(k, ref_at, row, threshold):
    """serve.Upstreams decides one request on plain floats; it must pick what policy.choose picks
    (scores equal to the threshold qualify, NaN never does, nothing qualifying: the reference)."""
    from hybridllm.serve.upstreams import Upstreams

    class Up:
        def __init__(self, who):
            self.who = self.model = who
            self.api = "chat"

    ref = max(1, min(ref_at, k))  # candidates are the models cheaper than the reference
    fleet = Fleet(tuple(f"m{i}" for i in range(k + 1)), tuple(float(2**i) for i in range(k + 1)), f"m{ref}")

    class FleetRouter:
        def __init__(self):
            self.config = {"candidates": [f"m{i}" for i in range(ref)], "fleet_quality": list(range(k + 1))}
            self.fleet = fleet

    scores = np.array(row[:ref], dtype=np.float64)
    routing = Upstreams(FleetRouter(), [Up(m) for m in fleet.models])
    index, _ = routing.decide(scores, threshold)
    assert index == int(choose(scores[None, :], fleet, threshold)[0])


def test_knobs_pick_the_cheapest_point_within_the_limit():
    table = [
        {"threshold": 1.000001, "cost": 100.0, "quality_drop": 0.0},
        {"threshold": 0.8, "cost": 70.0, "quality_drop": 0.5},
        {"threshold": 0.6, "cost": 40.0, "quality_drop": 3.0},
        {"threshold": 0.2, "cost": 10.0, "quality_drop": 9.0},
    ]
    default = {"kind": "max_quality_drop", "value": 1.0}
    assert resolve(table, default, max_quality_drop=1)[0] == 0.8
    assert resolve(table, default, max_quality_drop=5)[0] == 0.6
    assert resolve(table, default, budget=50)[0] == 0.6  # best quality within half the cost
    assert resolve(table, default, budget=5)[0] == 0.2  # nothing that cheap: the cheapest point
    assert resolve(table, default) == (0.8, "default (max_quality_drop=1%)")


@pytest.fixture(scope="module")
def rows(mmlu_slice):
    return read_table(mmlu_slice)


def small_head():
    return HeadConfig(members=2, epochs=6, extra=["log_tokens"])


@pytest.mark.slow
def test_two_models_are_one_fleet_whatever_the_spelling(rows, cache_env, tmp_path):
    """--small/--large and --models name the same fleet of two and train the same router: the same
    scores and the same decisions at every knob; only the costs tell them apart (a budget needs
    them)."""
    pair = train_router(
        rows, TrainOptions(small=SMALL, large=LARGE, head=small_head()), tmp_path / "pair", show_progress=False
    )
    fitted = fit_router(rows, TrainOptions(models=[SMALL, LARGE], costs={SMALL: 1.0, LARGE: 6.0}, head=small_head()))
    fitted.save(tmp_path / "fleet")
    a, b = Router(tmp_path / "pair"), Router(tmp_path / "fleet")
    prompts = [r["prompt"] for r in rows]
    sa, sb = a.score(prompts), b.score(prompts)
    assert sa.shape == sb.shape == (len(rows),)
    np.testing.assert_array_equal(sa, sb)
    np.testing.assert_array_equal(pair.val_scores, fitted.val_scores)
    for knob in ({"max_quality_drop": q} for q in (0.0, 1.0, 2.0, 5.0, 20.0)):
        assert a.threshold(**knob) == b.threshold(**knob)
        assert [d.model for d in a.route_batch(prompts, **knob)] == [d.model for d in b.route_batch(prompts, **knob)]
    qa = [(p["threshold"], p["quality_drop"], p["cost_advantage"], p["shares"]) for p in a.config["calibration"]]
    qb = [(p["threshold"], p["quality_drop"], p["cost_advantage"], p["shares"]) for p in b.config["calibration"]]
    assert qa == qb
    assert b.threshold(budget=60)[1] == "budget=60%"
    with pytest.raises(ValueError, match="budget needs the models' costs"):
        a.threshold(budget=60)


@pytest.mark.slow
def test_three_model_router_on_real_outcomes(rows, cache_env, tmp_path):
    fitted = fit_router(rows, TrainOptions(models=THREE, costs=THREE_COSTS, head=small_head()))
    out = fitted.save(tmp_path / "r3")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["fleet"]["reference"] == "Meta-Llama-3_1-70B-Instruct"
    assert cfg["candidates"] == THREE[:2] and set(cfg["t_star"]) == set(THREE[:2])
    router = Router(out)
    prompts = [r["prompt"] for r in rows[:50]]
    s = router.score(prompts)
    assert s.shape == (50, 2) and np.all((s >= 0) & (s <= 1))
    d = router.route(prompts[0], budget=50)
    assert d.model in THREE and set(d.scores) == set(THREE[:2]) and d.knob == "budget=50%"
    # the budget knob keeps its promise on the data it was calibrated on
    val = [p for p in cfg["calibration"]]
    for budget in (20, 40, 60, 80):
        thr = router.threshold(budget=budget)[0]
        point = next(p for p in val if p["threshold"] == thr)
        assert point["cost"] <= budget + 1e-9 or point["cost"] == min(p["cost"] for p in val)
    # lower budgets send more traffic to cheaper models
    picks = {b: [x.model for x in router.route_batch(prompts, budget=b)] for b in (10, 100)}
    assert picks[10].count(THREE[2]) <= picks[100].count(THREE[2])
    # the cost advantage of N models: the share of queries not sent to the reference model
    thr, why = router.threshold(cost_advantage=30)
    point = next(p for p in val if p["threshold"] == thr)
    assert why == "cost_advantage=30%" and point["cost_advantage"] == min(
        (p["cost_advantage"] for p in val), key=lambda ca: (abs(ca - 30), ca)
    )
    assert point["cost_advantage"] == pytest.approx(100 - point["shares"][2], abs=1e-3)
    q = quality_matrix(rows, THREE)
    assert q.shape == (len(rows), 3)


@pytest.mark.slow
def test_fleet_artifact_with_wrong_candidates_is_refused(rows, cache_env, tmp_path):
    fitted = fit_router(rows, TrainOptions(models=THREE, costs=THREE_COSTS, head=HeadConfig(members=1, epochs=2)))
    out = fitted.save(tmp_path / "r3")
    cfg = json.loads((out / "config.json").read_text())
    cfg["candidates"] = [THREE[1]]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="candidates"):
        Router(out)


@pytest.mark.slow
def test_serve_three_upstreams_with_the_openai_client(rows, cache_env, tmp_path):
    """`hybridllm serve` with a three-model router and three real upstreams: every knob, streaming,
    fallback to the next better model, and each request's estimated cost in /metrics."""
    import httpx
    import openai

    from .helpers.fake_openai import FakeOpenAI
    from .helpers.net import free_port
    from .helpers.procs import running_serve

    out = fit_router(rows, TrainOptions(models=THREE, costs=THREE_COSTS, head=small_head())).save(tmp_path / "r3")
    cfg = json.loads((out / "config.json").read_text())
    with FakeOpenAI() as a, FakeOpenAI() as b, FakeOpenAI() as c:
        ups = dict(zip(THREE, (a, b, c), strict=True))
        for name, up in ups.items():
            up.reply = lambda p, name=name: f"{name} says {p}"
        models = tmp_path / "models.toml"
        prices = {THREE[0]: (0.1, 0.1), THREE[1]: (0.2, 0.2), THREE[2]: (0.9, 0.9)}
        models.write_text(
            "".join(
                f'[models."{m}"]\nspec = "{m.lower()}@{ups[m].url}"\nprice_in = {prices[m][0]}\n'
                f"price_out = {prices[m][1]}\n"
                for m in THREE
            )
        )
        port = free_port()
        args = ["--router", str(out), "--models-file", str(models), "--port", str(port)]
        with running_serve(args, port):
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)

            def ask(model, **kw):
                return client.chat.completions.with_raw_response.create(
                    model=model, messages=[{"role": "user", "content": "What is 2+2?"}], **kw
                )

            r = ask("hybrid-t-0")  # every model qualifies: the cheapest answers
            assert r.headers["x-hybridllm-model"] == THREE[0]
            assert r.parse().choices[0].message.content == f"{THREE[0]} says What is 2+2?"
            scores = dict(kv.split("=") for kv in r.headers["x-hybridllm-scores"].split(","))
            assert set(scores) == set(THREE[:2])
            assert ask("hybrid-t-1.000001").headers["x-hybridllm-model"] == THREE[2]  # none: the reference
            for name in ("hybrid", "hybrid-qd-1", "hybrid-budget-30", "hybrid-budget-100"):
                assert ask(name).headers["x-hybridllm-model"] in THREE
            assert ask(THREE[1]).headers["x-hybridllm-model"] == THREE[1]  # forced by name
            assert ask("meta-llama-3_1-8b-instruct").headers["x-hybridllm-model"] == THREE[1]  # by upstream name
            assert ask("hybrid-ca-30").headers["x-hybridllm-model"] in THREE  # 30 % away from the reference
            with pytest.raises(openai.BadRequestError):
                ask("hybrid-ca-300")  # out of range: refused with the reason
            stream = client.chat.completions.create(
                model="hybrid-t-0", messages=[{"role": "user", "content": "one two"}], stream=True
            )
            text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
            assert text == f"{THREE[0]} says one two"
            # the cheapest fails: the next better model (by validation quality) answers
            q = dict(zip(cfg["fleet"]["models"], cfg["fleet_quality"], strict=True))
            better = sorted((m for m in THREE[1:] if q[m] >= q[THREE[0]]), key=lambda m: q[m])
            a.faults.append("500")
            r = ask("hybrid-t-0")
            assert r.headers["x-hybridllm-fallback-from"] == THREE[0]
            assert r.headers["x-hybridllm-model"] == (better[0] if better else THREE[2])
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        costs = {
            line.split("{")[1].split('"')[1]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("hybridllm_cost_total{")
        }
        assert costs[THREE[0]] > 0 and costs[THREE[2]] > 0
        saving = float(next(x for x in metrics.splitlines() if x.startswith("hybridllm_saving_ratio ")).split()[1])
        assert 0 < saving < 1


@pytest.mark.slow
def test_cli_trains_and_evaluates_a_fleet(mmlu_slice, cache_env, tmp_path):
    from .helpers.cli import run

    models = tmp_path / "models.toml"
    models.write_text("".join(f'[models."{m}"]\ncost = {c}\n' for m, c in THREE_COSTS.items()))
    out = tmp_path / "r"
    proc = run("train", str(mmlu_slice), "--models", ",".join(THREE), "--models-file", str(models),
               "--output", str(out), "--members", "2", "--epochs", "4")  # fmt: skip
    assert "saved router to" in proc.stdout and f"reference: {THREE[2]}" in proc.stdout
    proc = run(
        "evaluate", str(out), str(mmlu_slice), "--json", str(tmp_path / "e.json"), "--plot", str(tmp_path / "e.png")
    )
    report = json.loads((tmp_path / "e.json").read_text())
    assert {"router", "hull", "random", "oracle", "singles"} <= set(report) and report["n"] == 400
    assert report["router"]["aiq"] > 0 and (tmp_path / "e.png").stat().st_size > 10_000
    ci = report["ci95"]  # paired bootstrap: router and best fixed mix on the same resamples
    assert ci["router_aiq"][0] <= report["router"]["aiq"] <= ci["router_aiq"][1]
    lo, hi = ci["router_minus_hull_aiq"]
    assert lo <= report["router"]["aiq"] - report["hull"]["aiq"] <= hi
    assert bool(report["warnings"]) == (lo <= 0)  # warned exactly when the interval includes 0
    d = json.loads(run("route", str(out), "What is 2+2?", "--budget", "40").stdout)
    assert d["model"] in THREE and set(d["scores"]) == set(THREE[:2])
    bad = run("train", str(mmlu_slice), "--models", ",".join(THREE), "--cost", "nope=3", "--output", str(out), ok=False)
    assert bad.returncode == 1 and "--cost 'nope=3'" in bad.stderr


@pytest.mark.slow
def test_crossval_of_a_fleet_scores_every_row_out_of_fold(rows, cache_env, tmp_path):
    from hybridllm import cross_validate

    from .helpers.cli import run

    opts = TrainOptions(models=THREE, costs=THREE_COSTS, head=HeadConfig(members=1, epochs=3, extra=["log_tokens"]))
    res = cross_validate(rows, opts, folds=3)
    report, used, scores = res.report, res.rows, res.scores
    assert len(used) == report["n"] == 400 and scores.shape == (400, 2) and len(report["per_fold"]) == 3
    # fold 1 rebuilt by hand: the same out-of-fold scores
    from hybridllm.tables.format import split_rows

    parts = split_rows(used, [1 / 3] * 3, "crossval")
    train = parts[1] + parts[2]
    from dataclasses import replace

    again = Router.from_fitted(fit_router(train, replace(opts, seed=0))).score([r["prompt"] for r in parts[0]])
    index = {r["id"]: i for i, r in enumerate(used)}
    np.testing.assert_allclose(scores[[index[r["id"]] for r in parts[0]]], again, atol=1e-6)
    costs = ["--cost", f"{THREE[0]}=3.8", "--cost", f"{THREE[1]}=8", "--cost", f"{THREE[2]}=70"]
    out = tmp_path / "cv.json"
    table = tmp_path / "t.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run("crossval", str(table), "--models", ",".join(THREE), *costs, "--folds", "2", "--json", str(out))
    assert "per-fold AIQ" in proc.stdout and json.loads(out.read_text())["folds"] == 2


def _sweep_by_loop(s, q, fleet):
    """The policy sweep the plain way (one entry at a time), to check the vectorised one against."""
    n, k = s.shape
    costs, ref = np.asarray(fleet.costs), fleet.ref
    cur = np.full(n, ref)
    total_cost, total_q = n * costs[ref], float(q[:, ref].sum())
    flat = s.ravel()
    order = np.argsort(-flat, kind="stable")
    rows, i = [(float("inf"), total_cost, total_q)], 0
    while i < len(order):
        value, j = flat[order[i]], i
        while j < len(order) and flat[order[j]] == value:
            qi, m = divmod(int(order[j]), k)
            if m < cur[qi]:
                total_cost += costs[m] - costs[cur[qi]]
                total_q += q[qi, m] - q[qi, cur[qi]]
                cur[qi] = m
            j += 1
        rows.append((float(value), total_cost, total_q))
        i = j
    return rows


def test_vectorised_sweep_equals_the_plain_loop():
    from hybridllm.routing.policy import Fleet, sweep_arrays

    rng = np.random.default_rng(7)
    for trial in range(40):
        n, m = int(rng.integers(1, 200)), int(rng.integers(2, 7))
        q = rng.random((n, m)) if trial % 2 else (rng.random((n, m)) < 0.5).astype(float)
        fleet = Fleet(tuple(f"m{i}" for i in range(m)), tuple(sorted(rng.random(m) * 10 + 0.1)), f"m{m - 1}")
        s = rng.random((n, m - 1))
        if trial % 3 == 0:
            s = np.round(s, 1)  # ties within and across queries
        thr, cost, drop, shares = sweep_arrays(s, q, fleet)
        ref = _sweep_by_loop(s, q, fleet)
        assert len(thr) == len(ref) and np.allclose(shares.sum(axis=1), 100)
        c_ref, q_ref = fleet.costs[fleet.ref], q[:, fleet.ref].mean()
        for t, c, d, (rt, rc, rq) in zip(thr[1:], cost[1:], drop[1:], ref[1:], strict=True):
            assert t == rt
            assert c == pytest.approx(rc / (n * c_ref) * 100, abs=1e-9)
            assert d == pytest.approx((q_ref - rq / n) / (abs(q_ref) or 1) * 100, abs=1e-9)


def test_a_fleet_artifact_of_the_previous_release_decides_as_it_did(cache_env):
    """A three-model router written by the release before one core (format 1, ``kind: fleet``,
    tests/data/fleet_v2): read in the current form, it scores and decides as it did then."""
    from .conftest import REPO

    data = REPO / "tests" / "data"
    want = json.loads((data / "fleet_v2_decisions.json").read_text())
    assert json.loads((data / "fleet_v2" / "config.json").read_text())["kind"] == "fleet"
    router = Router(data / "fleet_v2")
    assert router.config["format_version"] == 3 and "kind" not in router.config
    assert all("cost_advantage" in p for p in router.config["calibration"])
    rows = {r["id"]: r for r in read_table(REPO.parent / "shared" / "data" / "mmlu_pro.jsonl")}
    prompts = [rows[i]["prompt"] for i in want["ids"]]
    # float32 scores as the release wrote them, to a few units in the last place: the matrix products' sums
    # run in another order on another CPU's kernels (AVX-512 against AVX2); the decisions, exactly
    assert router.score(prompts) == pytest.approx(np.array(want["scores"]), rel=0, abs=1e-6)
    for point in want["decisions"]:
        decisions = router.route_batch(prompts, **point["knob"])
        assert decisions[0].threshold == point["threshold"], point["knob"]
        assert [d.model for d in decisions] == point["models"], point["knob"]
