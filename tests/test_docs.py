"""The documentation's Python examples, run as written (only the proxy's port is swapped for a free
one), and the generated pages checked against what generates them, so the docs cannot drift from the
code."""

import contextlib
import io
import re
import subprocess
import sys

import pytest

from hybridllm.tables.format import read_table, split_rows, write_table

from .conftest import LARGE, REPO, SMALL
from .helpers.fake_openai import FakeOpenAI
from .helpers.net import free_port
from .helpers.procs import running_serve


def readme_block(starts_with: str, doc: str = "README.md") -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / doc).read_text(), flags=re.S)
    (block,) = [b for b in blocks if b.startswith(starts_with)]
    return block


def run_block(code: str) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    return buf.getvalue()


@pytest.mark.slow
def test_python_api_example(mmlu_slice, cache_env, tmp_path, monkeypatch):
    train, val = split_rows(read_table(mmlu_slice), [0.75, 0.25], "docs")
    write_table(train, tmp_path / "runs/mmlu/train.jsonl")
    write_table(val, tmp_path / "runs/mmlu/val.jsonl")
    monkeypatch.chdir(tmp_path)
    code = readme_block("from hybridllm import Router")
    assert SMALL in code and LARGE in code  # the example trains the pair the slice holds
    printed = run_block(code).split()
    assert printed[0] in (SMALL, LARGE) and 0 <= float(printed[1]) <= 1 and 0 <= float(printed[2]) <= 1
    assert (tmp_path / "runs/router/config.json").exists()


@pytest.mark.slow
def test_openai_client_example(mmlu_slice, cache_env, tmp_path):
    from hybridllm.model.fit import TrainOptions, train_router

    router = tmp_path / "router"
    train_router(read_table(mmlu_slice), TrainOptions(small=SMALL, large=LARGE), router, show_progress=False)
    port = free_port()
    code = readme_block("from openai import OpenAI", "docs/serve.md").replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        s_up.reply = lambda p: "small says 4"
        l_up.reply = lambda p: "large says 4"
        args = ["--router", str(router), "--small", f"s@{s_up.url}", "--large", f"l@{l_up.url}", "--port", str(port)]
        with running_serve(args, port):
            model, score, threshold, *answer = run_block(code).split()
    assert model in (SMALL, LARGE) and 0 <= float(score) <= 1 and 0 <= float(threshold) <= 1
    assert " ".join(answer) == {SMALL: "small says 4", LARGE: "large says 4"}[model]


@pytest.mark.slow
def test_generated_pages_are_current():
    """docs/benchmarks.md is what benchmarks/results/*.json give, docs/cli.md what the commands say:
    a rerun benchmark or a changed option whose page was not regenerated fails here."""
    for script in ("benchmarks/report.py", "scripts/cli_reference.py"):
        got = subprocess.run([sys.executable, script, "--check"], cwd=REPO, capture_output=True, text=True)
        assert got.returncode == 0, f"{script}: {got.stderr.strip()}"


def test_every_relative_link_and_image_resolves():
    """docs/serve.md and docs/pipeline.md once showed images at docs/img/..., which from docs/ is
    docs/docs/img: every relative link and image in README.md and docs/*.md must name a file that
    exists, read from the page's own folder (code blocks and code spans are not links)."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    targets, broken = 0, []
    for page in pages:
        text = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", page.read_text(), flags=re.S))
        for target in re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL, or a heading of the same page
            targets += 1
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert targets > 20  # the pages were read
    assert not broken, f"relative links that name no file: {broken}"


def _serve_flags() -> set[str]:
    """Every option name `hybridllm serve --help` lists (read from the command it prints them from)."""
    import typer

    from hybridllm.cli import app

    group = typer.main.get_command(app)
    ctx = group.make_context("hybridllm", [], resilient_parsing=True)
    serve = group.get_command(ctx, "serve")
    return {o for p in serve.params for o in [*p.opts, *p.secondary_opts] if o.startswith("--")}


def _documented_serve_flags() -> list[tuple[str, str]]:
    """(where, flag) for every flag the docs give `hybridllm serve`: in its command lines (a shell
    block's `hybridllm serve ...`, continuation lines joined) in the README and docs/*.md, and every
    `--flag` in the prose of docs/serve.md and docs/control.md (the pages about serve)."""
    found = []
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for page in pages:
        if page.name == "cli.md":  # generated from the commands (test_generated_pages_are_current)
            continue
        text = page.read_text()
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                _, sep, rest = line.partition("hybridllm serve")
                if sep:
                    rest = re.split(r"\s(?:\||&&|;|#)", rest)[0]
                    found += [(page.name, f) for f in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest)]
        if page.name in ("serve.md", "control.md"):
            prose = re.sub(r"```.*?```", "", text, flags=re.S)
            found += [(page.name, m) for m in re.findall(r"`(--[a-z][a-z0-9-]*)", prose)]
    return found


def test_every_serve_flag_the_docs_give_exists():
    """docs/control.md once showed `--log-prompts`, which `serve` did not take: a documented flag that
    `hybridllm serve --help` does not list fails here, naming the page."""
    flags = _serve_flags()
    documented = _documented_serve_flags()
    assert len(documented) > 30  # the pages were read
    missing = sorted({f"{page}: {flag}" for page, flag in documented if flag not in flags})
    assert not missing, f"flags in the docs that `hybridllm serve` does not take: {missing}"
