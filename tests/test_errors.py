"""One base class for the project's errors: a caller catches every deliberate failure with it."""

import pytest

import hybridllm
from hybridllm.errors import HybridLLMError
from hybridllm.model.artifact import ArtifactError, load_config
from hybridllm.serve import KnobError, ServeConfig, ServeConfigError, parse_knob
from hybridllm.tables.format import TableError, read_table


def test_every_deliberate_error_is_a_hybridllm_error(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(HybridLLMError) as info:
        read_table(tmp_path / "t.jsonl")
    assert isinstance(info.value, TableError) and isinstance(info.value, ValueError)
    with pytest.raises(HybridLLMError) as info:
        load_config(tmp_path)
    assert isinstance(info.value, ArtifactError)
    with pytest.raises(HybridLLMError) as info:
        parse_knob("hybrid-qd-01", None, {})
    assert isinstance(info.value, KnobError)
    with pytest.raises(HybridLLMError) as info:
        ServeConfig.load(None, port=70000)
    assert isinstance(info.value, ServeConfigError) and "port" in str(info.value)
    assert hybridllm.HybridLLMError is HybridLLMError
