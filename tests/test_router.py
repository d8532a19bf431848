"""Training, artifact round trip and the Python routing API, with the real default encoder."""

import json

import numpy as np
import pytest

from hybridllm import ArtifactError, Router, TrainOptions, read_table, train_router
from hybridllm.evaluate.metrics import expected_quality
from hybridllm.model.head import HeadConfig

from .conftest import LARGE, SMALL

pytestmark = pytest.mark.slow  # trains routers (the transformer encoder)


def quick_options() -> TrainOptions:
    """A small but real configuration: 2 members, 8 epochs, the default static encoder."""
    return TrainOptions(
        small=SMALL,
        large=LARGE,
        labels="trans",
        max_length=128,
        head=HeadConfig(members=2, epochs=8, extra=["log_tokens"]),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_env, mmlu_slice):
    rows = read_table(mmlu_slice)
    out = tmp_path_factory.mktemp("router") / "r"
    opts = quick_options()
    res = train_router(rows, opts, out, show_progress=False)
    return res, rows


def test_artifact_contents(trained):
    res, _ = trained
    files = sorted(p.name for p in res.output.iterdir())
    assert files == ["config.json", "head.safetensors"]
    cfg = json.loads((res.output / "config.json").read_text())
    # version 3: one kind for any number of models; a pair is a fleet of two without costs. Version 4 only
    # for what a version-3 reader would misread: a memory that weighs its neighbours alike
    from safetensors.numpy import load_file

    uniform = "knn_uniform" in load_file(str(res.output / "head.safetensors"))
    assert cfg["format_version"] == (4 if uniform else 3)
    # one scored model: every rule ranks alike, so the threshold on raw scores; the memory's weight chosen
    pol, chosen = cfg["policy"], cfg["policy"]["choice"]["chosen"]
    assert (pol["rule"], pol["scores"]) == ("threshold", "raw") == (chosen["rule"], chosen["scores"])
    assert cfg["policy"]["choice"]["by"] == "validation APGR" and cfg["policy"]["choice"]["runner_up"] is not None
    assert cfg["fleet"] == {"models": [SMALL, LARGE], "costs": [1.0, 2.0], "reference": LARGE, "costs_given": False}
    assert cfg["candidates"] == [SMALL]
    assert cfg["small"] == SMALL and cfg["large"] == LARGE
    assert cfg["labels"] == "trans" and cfg["t_star"] == {SMALL: 0.0}  # binary qualities: t* = 0
    assert cfg["encoder"]["name"] == "all-MiniLM-L6-v2-static" and cfg["encoder"]["spec"] == "static"
    assert cfg["default_operating_point"] == {"kind": "max_quality_drop", "value": 1.0}
    assert cfg["data"]["train_rows"] + cfg["data"]["validation_rows"] == 400
    assert len(cfg["data"]["train_digest"]) == 64
    assert cfg["calibration"][0]["cost_advantage"] == 0.0 and cfg["calibration"][0]["cost"] == 100.0
    assert "1" in cfg["operating_points"]["max_quality_drop"]
    assert not any(p.suffix in (".pkl", ".pt", ".bin") for p in res.output.iterdir())


def test_round_trip_scores_match_validation(trained):
    res, rows = trained
    router = Router(res.output)
    val_ids = set()
    # the validation rows are the hashed-id holdout; rescoring them must reproduce training's scores
    from hybridllm.tables.format import select_pair, split_rows

    _, val = split_rows(select_pair(rows, SMALL, LARGE).rows, [0.8, 0.2], "hybridllm-val")
    val_ids = [r["id"] for r in val]
    scores = router.score([r["prompt"] for r in val])
    assert len(val_ids) == len(res.val_scores)
    np.testing.assert_allclose(scores, res.val_scores, atol=1e-5)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_route_knobs(trained):
    res, rows = trained
    router = Router(res.output)
    prompt = rows[0]["prompt"]
    d = router.route(prompt, threshold=0.0)
    assert d.model == SMALL and d.use_small and d.threshold == 0.0
    d = router.route(prompt, threshold=1.0 + 1e-6)
    assert d.model == LARGE and not d.use_small
    d = router.route(prompt)
    assert d.knob.startswith("default (max_quality_drop=1%)")
    # a higher cost-advantage knob never lowers small-model traffic
    batch = [r["prompt"] for r in rows[:60]]
    shares = [np.mean([x.use_small for x in router.route_batch(batch, cost_advantage=c)]) for c in (10, 50, 90)]
    assert shares[0] <= shares[1] <= shares[2]
    assert shares[2] > shares[0]


def test_calibration_meets_target_on_validation(trained):
    res, rows = trained
    router = Router(res.output)
    from hybridllm.tables.format import select_pair, split_rows

    _, val = split_rows(select_pair(rows, SMALL, LARGE).rows, [0.8, 0.2], "hybridllm-val")
    qs, ql = expected_quality(val, SMALL, LARGE)
    scores = router.score([r["prompt"] for r in val])
    for target in (0.0, 1.0, 5.0):
        thr, _ = router.threshold(max_quality_drop=target)
        small = scores >= thr
        qd = (ql.mean() - np.where(small, qs, ql).mean()) / ql.mean() * 100
        assert qd <= target + 1e-6


def test_training_is_repeatable(trained, tmp_path):
    res, rows = trained
    opts = quick_options()
    again = train_router(rows, opts, tmp_path / "again", show_progress=False)
    np.testing.assert_allclose(again.val_scores, res.val_scores, atol=1e-6)


def test_unknown_format_version_is_refused(trained, tmp_path):
    res, _ = trained
    import shutil

    d = tmp_path / "future"
    shutil.copytree(res.output, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["format_version"] = 99
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="format_version 99 is not supported"):
        Router(d)
    with pytest.raises(ArtifactError, match="not a router artifact"):
        Router(tmp_path)


def test_augmentation_of_single_line_prompts():
    """A corpus without any multi-line prompt (every GSM8K question) used to crash training."""
    from hybridllm.features.text import distractor_copies

    texts = [f"Tom has {i} apples and buys {i + 3} more. How many apples does he have now?" for i in range(40)]
    out, src = distractor_copies(texts, 4, seed=1)
    assert len(out) == 160 and src == [i for i in range(40) for _ in range(4)]
    assert all(o.startswith(texts[i][:20]) and len(o) > len(texts[i]) for o, i in zip(out, src, strict=True))


@pytest.mark.parametrize("outputs", [1, 4])
@pytest.mark.parametrize("mix", [None, 0.0, 0.25, 1.0])
def test_folded_head_equals_the_plain_one(outputs, mix):
    """The head's inference form (standardisation folded into the first layer, members side by
    side, the mixed-out part skipped) computes what the plain member-by-member formula does."""
    from hybridllm.model.head import HeadWeights

    rng = np.random.default_rng(outputs)
    e, d, h = 3, 17, 8
    w2 = rng.normal(size=(e, h)) if outputs == 1 else rng.normal(size=(e, h, outputs))
    lin_w = rng.normal(size=d) if outputs == 1 else rng.normal(size=(d, outputs))
    w = HeadWeights(
        w1=rng.normal(size=(e, d, h)), b1=rng.normal(size=(e, h)), w2=w2, b2=rng.normal(size=(e, *w2.shape[2:])),
        mu=rng.normal(size=d), sd=rng.uniform(0.5, 2, size=d), lin_w=lin_w,
        lin_b=rng.normal(size=outputs), lin_mu=rng.normal(size=d), lin_sd=rng.uniform(0.5, 2, size=d),
        mix=None if mix is None else np.array([mix]),
    )  # fmt: skip
    w = HeadWeights.from_tensors(w.tensors())
    x = rng.normal(size=(50, d)).astype(np.float32)
    a = 0.0 if mix is None else mix
    plain = (1 - a) * w.predict_mlp(x) + a * w.predict_linear(x)
    got = w.predict(x)
    assert got.shape == plain.shape == ((50,) if outputs == 1 else (50, outputs))
    np.testing.assert_allclose(got, plain, rtol=0, atol=2e-6)
    # one prompt alone gets the score it gets in a batch (the proxy scores both ways)
    np.testing.assert_allclose(w.predict(x[:1])[0], got[0], rtol=0, atol=1e-6)
    # weights changed after a first prediction (training sets the linear member late) are seen
    w.mix = np.array([1.0 - a])
    np.testing.assert_allclose(w.predict(x), a * w.predict_mlp(x) + (1 - a) * w.predict_linear(x), atol=2e-6)


@pytest.mark.parametrize("outputs", [1, 3])
def test_memory_member_is_similarity_weighted_knn(outputs):
    """The memory member is k-nearest-neighbour regression with cosine similarity and 1 / distance
    weights (what scikit-learn computes with weights="distance", metric="cosine"), in a principal
    subspace of the training prompts; a prompt seen in training all but gets its own label back."""
    from sklearn.neighbors import KNeighborsRegressor

    from hybridllm.model.memory import fit_memory, keys, recall

    rng = np.random.default_rng(outputs)
    mem = rng.normal(size=(300, 12)).astype(np.float32)
    y = rng.uniform(size=300 if outputs == 1 else (300, outputs)).astype(np.float32)
    q = rng.normal(size=(40, 12)).astype(np.float32)
    got = recall(mem / np.linalg.norm(mem, axis=1, keepdims=True), y, q / np.linalg.norm(q, axis=1, keepdims=True), 25)
    ref = KNeighborsRegressor(n_neighbors=25, weights="distance", metric="cosine").fit(mem, y).predict(q)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    # fitted: prompts compared in a subspace of the first 12 columns (two appended scalars ignored)
    x = np.c_[mem, rng.normal(size=(300, 2))].astype(np.float32)
    x_val = np.c_[q, rng.normal(size=(40, 2))].astype(np.float32)
    member, _ = fit_memory(x, y, x_val, lambda p: 0.0, 12)
    assert member.proj.shape == (12, 12) and member.x.shape == (300, 12)  # r = min(64, d, N)
    target = recall(member.x, member.y, keys(x_val, member.mu, member.proj), 100)
    member, score = fit_memory(x, y, x_val, lambda p: -float(np.abs(p - target).mean()), 12)
    assert member.k == 100 and score == 0.0  # k: the one the validation metric prefers
    member.k = 25
    # a full-rank subspace is a rotation: the cosines are those of the centred unit embeddings
    unit = mem / np.linalg.norm(mem, axis=1, keepdims=True)
    centred = KNeighborsRegressor(n_neighbors=25, weights="distance", metric="cosine").fit(unit - unit.mean(0), y)
    want = centred.predict(q / np.linalg.norm(q, axis=1, keepdims=True) - unit.mean(0))
    np.testing.assert_allclose(member(x_val), want, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(member(x[:5] * 3.0), y[:5], atol=0.02)  # seen prompts: their own labels
    big = rng.normal(size=(500, 100)).astype(np.float32)
    member, _ = fit_memory(big, rng.uniform(size=500), big[:10], lambda p: 0.0, 100)
    assert member.proj.shape == (100, 64) and member.x.shape == (500, 64)
    np.testing.assert_allclose(np.linalg.norm(keys(big, member.mu, member.proj), axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("outputs", [1, 3])
def test_memory_member_scores_one_prompt_as_in_a_batch(outputs):
    """The proxy's lone decisions take the member's vector path (Memory._one): the same value as
    the batch form, to float32 rounding, for every prompt, with k below and at the memory's size."""
    from hybridllm.model.memory import fit_memory

    rng = np.random.default_rng(7 + outputs)
    x = rng.normal(size=(400, 20)).astype(np.float32)
    y = rng.uniform(size=400 if outputs == 1 else (400, outputs)).astype(np.float32)
    q = np.c_[rng.normal(size=(60, 20)), rng.normal(size=(60, 1))].astype(np.float32)
    member, _ = fit_memory(np.c_[x, np.zeros(400)].astype(np.float32), y, q, lambda p: 0.0, 20)
    for k in (25, 400):
        member.k = k
        batch = member(q)
        one = np.concatenate([member(q[i : i + 1]) for i in range(len(q))])
        assert one.shape == batch.shape and one.dtype == np.float32
        np.testing.assert_allclose(one, batch, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("outputs", [1, 3])
def test_folded_head_mixes_in_the_memory_member(outputs):
    from hybridllm.model.head import HeadWeights
    from hybridllm.model.memory import fit_memory

    rng = np.random.default_rng(7)
    e, d, h = 2, 10, 4
    w2 = rng.normal(size=(e, h)) if outputs == 1 else rng.normal(size=(e, h, outputs))
    x_mem = rng.normal(size=(60, d)).astype(np.float32)
    mem, _ = fit_memory(x_mem, rng.uniform(size=60 if outputs == 1 else (60, outputs)), x_mem[:5], lambda p: 0.0, d - 1)
    w = HeadWeights(
        w1=rng.normal(size=(e, d, h)), b1=rng.normal(size=(e, h)), w2=w2, b2=rng.normal(size=(e, *w2.shape[2:])),
        mu=rng.normal(size=d), sd=rng.uniform(0.5, 2, size=d), knn_x=mem.x, knn_y=mem.y, knn_mu=mem.mu,
        knn_proj=mem.proj, knn_k=np.array([9.0]), knn_mix=np.array([0.3]),
    )  # fmt: skip
    w = HeadWeights.from_tensors(w.tensors())
    x = rng.normal(size=(20, d)).astype(np.float32)
    member = w.memory()
    assert member is not None and member.k == 9
    want = 0.7 * w.predict_mlp(x) + 0.3 * member(x)
    np.testing.assert_allclose(w.predict(x), want, rtol=0, atol=2e-6)
    np.testing.assert_allclose(w.predict(x[:1])[0], want[0], rtol=0, atol=2e-6)
