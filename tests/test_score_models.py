"""bartscore and reward-model on tiny models created inside the test (random weights, real code)."""

import pytest
import torch

from hybridllm.stages.score import bartscore_batch, reward_model_batch, score_rows

pytestmark = pytest.mark.slow  # torch models (BARTScore, a reward model)


@pytest.fixture(scope="module")
def tiny_bart(tmp_path_factory, tokenizer_dir):
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    cfg = BartConfig(
        vocab_size=tok.vocab_size,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        decoder_start_token_id=tok.sep_token_id,
    )
    d = tmp_path_factory.mktemp("tiny-bart")
    BartForConditionalGeneration(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


ROW = {"id": "b", "prompt": "What is the capital of France?", "reference": "Paris is the capital of France."}
RESPONSES = ["Paris.", "The capital of France is Paris, a city on the Seine.", "Berlin"]


def test_bartscore_is_mean_token_log_likelihood_of_reference(tiny_bart):
    from transformers import AutoTokenizer, BartForConditionalGeneration

    got = bartscore_batch([(r, ROW) for r in RESPONSES], str(tiny_bart))
    tok = AutoTokenizer.from_pretrained(str(tiny_bart))
    model = BartForConditionalGeneration.from_pretrained(str(tiny_bart)).eval()
    for resp, value in zip(RESPONSES, got, strict=True):
        src = tok(resp, return_tensors="pt")
        labels = tok(text_target=ROW["reference"], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            loss = model(**src, labels=labels).loss.item()  # mean cross-entropy per reference token
        assert value == pytest.approx(-loss, abs=1e-4)  # padding in the batch changes nothing
        assert value < 0
    out = score_rows([{**ROW, "responses": {"m": RESPONSES}}], "bartscore", model_path=str(tiny_bart))
    assert out[0]["quality"]["m"] == pytest.approx(got, abs=1e-6)


def test_reward_model_scores_prompt_response_pairs(tiny_rm):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    got = reward_model_batch([(r, ROW) for r in RESPONSES], str(tiny_rm))
    tok = AutoTokenizer.from_pretrained(str(tiny_rm))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_rm)).eval()
    for resp, value in zip(RESPONSES, got, strict=True):
        with torch.no_grad():
            logit = model(**tok(ROW["prompt"], resp, return_tensors="pt")).logits[0, 0].item()
        assert value == pytest.approx(logit, abs=1e-4)
    assert len(set(round(v, 6) for v in got)) == 3


def test_checkpoint_path_is_required(tmp_path):
    with pytest.raises(ValueError, match="local checkpoint directory"):
        bartscore_batch([("x", ROW)], None)
    with pytest.raises(ValueError, match="local checkpoint directory"):
        reward_model_batch([("x", ROW)], str(tmp_path / "missing"))
