"""--mode finetune on CPU: a tiny real run (the paper's full encoder training), saved and reloaded."""

import gc
import json
import tempfile

import numpy as np
import pytest

from hybridllm import Router, TrainOptions, read_table, train_router
from hybridllm.model.fit import FittedRouter

from .conftest import LARGE, SMALL

pytestmark = pytest.mark.slow  # fine-tunes a transformer encoder


def test_finetune_round_trip(tmp_path, cache_env, mmlu_slice, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    rows = read_table(mmlu_slice)[:60]
    opts = TrainOptions(
        small=SMALL,
        large=LARGE,
        mode="finetune",
        labels="prob",
        max_length=32,
        finetune_epochs=1,
        finetune_batch_size=8,
    )
    res = train_router(rows, opts, tmp_path / "ft", show_progress=False)
    # the fine-tuned encoder's work directory went with the training: the artifact has its copy
    assert not list(scratch.glob("hybridllm-finetune-*"))
    cfg = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert cfg["mode"] == "finetune" and cfg["encoder"]["bundled"] is True
    files = {p.name for p in (tmp_path / "ft" / "encoder").iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert not any(p.suffix in (".pt", ".bin", ".pkl") for p in (tmp_path / "ft").rglob("*"))
    router = Router(tmp_path / "ft")
    from hybridllm.tables.format import select_pair, split_rows

    _, val = split_rows(select_pair(rows, SMALL, LARGE).rows, [0.8, 0.2], "hybridllm-val")
    # the served path (ONNX export of the fine-tuned encoder + numpy head) equals training's torch path
    np.testing.assert_allclose(router.score([r["prompt"] for r in val]), res.val_scores, atol=1e-4)


def test_a_fitted_routers_work_directory_goes_with_it(tmp_path):
    def fitted_with_dir(name):
        work = tmp_path / name
        (work / "encoder").mkdir(parents=True)
        return FittedRouter({}, None, np.zeros(1), 0, 0, work), work

    fitted, work = fitted_with_dir("closed")
    fitted.close()
    assert not work.exists()
    fitted.close()  # twice is harmless

    fitted, work = fitted_with_dir("released")
    assert work.exists()
    del fitted
    gc.collect()
    assert not work.exists()
