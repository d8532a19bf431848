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


def test_every_error_class_is_in_the_tree_and_exported():
    """Every exception class the library defines derives from HybridLLMError, and each is importable
    from the package itself (the CLI's own, which never leaves the CLI, aside)."""
    import importlib
    import inspect
    import pkgutil

    defined = {}
    for info in pkgutil.walk_packages(hybridllm.__path__, "hybridllm."):
        if info.name.startswith(("hybridllm.cli", "hybridllm.engine.jobs")):
            continue  # the CLI's error never leaves it; the Ray jobs import ray
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                defined[name] = obj
    assert len(defined) >= 15
    assert all(issubclass(e, HybridLLMError) for e in defined.values()), [
        n for n, e in defined.items() if not issubclass(e, HybridLLMError)
    ]
    assert {n for n in defined if getattr(hybridllm, n, None) is not defined[n]} == set()
    assert set(defined) <= set(hybridllm.__all__)
