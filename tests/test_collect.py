"""collect: crash safety (kill -9 at random moments, then resume) and the table it produces."""

import json
import os
import random
import signal
import subprocess
import time

import pytest

from hybridllm.tables.format import read_table

from .conftest import SHARED
from .helpers.cli import COLLECT, collect_cmd
from .helpers.fake_openai import FakeOpenAI

pytestmark = pytest.mark.slow  # `hybridllm collect` in subprocesses, killed and resumed


@pytest.fixture
def upstream():
    with FakeOpenAI() as f:
        yield f


@pytest.fixture
def prompts(tmp_path):
    p = tmp_path / "prompts.jsonl"
    with (SHARED / "gsm8k" / "test.jsonl").open() as src, p.open("w") as dst:
        for _ in range(20):
            dst.write(next(src))
    return p


def test_collect_builds_table_in_sample_order(prompts, upstream, tmp_path):
    out = tmp_path / "t.jsonl"
    subprocess.run(collect_cmd(prompts, upstream, out, samples=2), check=True, capture_output=True, timeout=120)
    rows = read_table(out)
    assert len(rows) == 20
    r = rows[0]
    assert r["id"] == "gsm8k-test-0" and r["reference"] == "18"
    assert len(r["responses"]["small"]) == 2 and len(r["responses"]["large"]) == 2
    assert r["responses"]["small"][0].startswith("echo:Janet")
    assert r["responses"]["small"][0] != r["responses"]["small"][1]  # different per-sample seeds
    assert not (tmp_path / "t.jsonl.journal.jsonl").exists()
    assert all(b["temperature"] == 0.8 for b in upstream.requests)


def journaled(journal):
    """Sample keys in the journal, ignoring a torn last line (the writer may be mid-append). Parsed
    here rather than with ``collect.read_journal``, whose dict by key would hide a sample journaled
    twice, which is what the test checks for."""
    if not journal.exists():
        return []
    lines = [line for line in journal.read_bytes().split(b"\n")[:-1] if line]
    recs = [json.loads(x) for x in lines]
    return [tuple(r[k] for k in ("id", "model", "k")) for r in recs if "_settings" not in r]


def test_kill_9_at_random_points_then_resume_equals_uninterrupted_run(prompts, upstream, tmp_path):
    reference = tmp_path / "ref.jsonl"
    subprocess.run(collect_cmd(prompts, upstream, reference), check=True, capture_output=True, timeout=120)
    upstream.delay = 0.1
    out = tmp_path / "killed.jsonl"
    journal = tmp_path / "killed.jsonl.journal.jsonl"
    rng = random.Random(1234)
    kills = 0
    progress = []
    total = 20 * 2 * 3
    for _ in range(6):
        # Kill at a random point of the run's progress, not of wall time: process start-up (imports)
        # varies several-fold between machines, and a wall-clock kill could land before the first
        # sample or after the last one.
        target = min(len(journaled(journal)) + rng.randint(3, 25), total - 5)
        proc = subprocess.Popen(
            collect_cmd(prompts, upstream, out),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "HYBRIDLLM_NO_PROGRESS": "1"},
        )
        deadline = time.monotonic() + 60
        while proc.poll() is None and len(journaled(journal)) < target and time.monotonic() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        if out.exists():  # finished: the journal is gone, its table is checked below
            break
        keys = journaled(journal)
        assert len(keys) == len(set(keys)), "a sample was journaled twice"
        progress.append(len(keys))
    assert kills >= 2, f"the run finished before it could be interrupted twice (progress {progress})"
    assert progress == sorted(progress), "journaled samples were lost between runs"
    assert 0 < progress[0] < total, f"the first kill did not land mid-run (progress {progress})"
    if not out.exists():
        subprocess.run(collect_cmd(prompts, upstream, out), check=True, capture_output=True, timeout=120)
    assert read_table(out) == read_table(reference)
    assert not journal.exists()


def test_collect_errors_are_one_line(prompts, tmp_path):
    p = subprocess.run(
        [
            *COLLECT,
            str(prompts),
            "--model",
            "small",
            "--output",
            str(tmp_path / "x.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0 and p.stderr.strip().count("\n") == 0 and "NAME=SPEC" in p.stderr


def test_journal_drops_a_torn_last_line(tmp_path):
    from hybridllm.stages.journal import Journal

    p = tmp_path / "j.jsonl"
    p.write_bytes(b'{"id": "a", "model": "s", "k": 0, "text": "x"}\n{"id": "a", "model": "s", "k": 1, "te')
    j = Journal(p)
    assert set(j.done) == {("a", "s", 0)}
    j.append({"id": "a", "model": "s", "k": 1, "text": "y"})
    j.close()
    assert set(Journal(p).done) == {("a", "s", 0), ("a", "s", 1)}


def test_template_wraps_what_is_sent_not_what_is_stored(prompts, upstream, tmp_path):
    out = tmp_path / "t.jsonl"
    c = [
        *collect_cmd(prompts, upstream, out, samples=1),
        "--template",
        "Solve; end with #### N.\n\n{prompt}",
        "--limit",
        "2",
    ]
    subprocess.run(c, check=True, capture_output=True, timeout=120)
    rows = read_table(out)
    assert len(rows) == 2 and rows[0]["prompt"].startswith("Janet")
    assert all(
        b["messages"][0]["content"].startswith("Solve; end with #### N.\n\nJanet")
        or not b["messages"][0]["content"].endswith(rows[0]["prompt"])
        for b in upstream.requests
    )
    assert any(
        b["messages"][0]["content"] == "Solve; end with #### N.\n\n" + rows[0]["prompt"] for b in upstream.requests
    )


def test_system_turn_goes_before_every_prompt_and_is_part_of_the_settings(prompts, upstream, tmp_path):
    out = tmp_path / "t.jsonl"
    base = [*collect_cmd(prompts, upstream, out, samples=1), "--template", "Q: {prompt}", "--limit", "2"]
    subprocess.run([*base, "--system", "Answer with a number."], check=True, capture_output=True, timeout=120)
    rows = read_table(out)
    assert rows[0]["prompt"].startswith("Janet")  # the table keeps the question itself
    assert len(upstream.requests) == 4
    for b in upstream.requests:
        assert b["messages"][0] == {"role": "system", "content": "Answer with a number."}
        assert b["messages"][1]["role"] == "user" and b["messages"][1]["content"].startswith("Q: ")
    assert {b["messages"][1]["content"] for b in upstream.requests} == {"Q: " + r["prompt"] for r in rows}


def test_format_prompt_template_then_system():
    from hybridllm.stages.collect import format_prompt

    row = {"id": "a", "prompt": "2+2?"}
    assert format_prompt(row) is row
    assert format_prompt(row, "Q: {prompt}") == {"id": "a", "prompt": "Q: 2+2?"}
    assert format_prompt(row, "Q: {prompt}", "Be brief.")["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q: 2+2?"},
    ]
    chat = {"id": "b", "prompt": [{"role": "user", "content": "hi"}]}
    assert format_prompt(chat, "Q: {prompt}")["prompt"] == chat["prompt"]  # templates wrap strings only
    assert format_prompt(chat, system="S")["prompt"][0] == {"role": "system", "content": "S"}
    own = {"id": "c", "prompt": [{"role": "system", "content": "mine"}, {"role": "user", "content": "hi"}]}
    assert format_prompt(own, system="S") is own  # a row's own system turn wins
    assert row == {"id": "a", "prompt": "2+2?"}  # rows in, new rows out


def test_resuming_with_other_settings_is_refused(prompts, upstream, tmp_path):
    out = tmp_path / "t.jsonl"
    journal = tmp_path / "t.jsonl.journal.jsonl"
    upstream.delay = 0.05
    proc = subprocess.Popen(collect_cmd(prompts, upstream, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while (not journal.exists() or journal.read_bytes().count(b"\n") < 3) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    changed = [a if a != "0.8" else "0.2" for a in collect_cmd(prompts, upstream, out)]  # another temperature
    p = subprocess.run(changed, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "other settings (params differ)" in last
    upstream.delay = 0.0
    subprocess.run(collect_cmd(prompts, upstream, out), check=True, capture_output=True, timeout=120)  # same: resumes
    assert len(read_table(out)) == 20


@pytest.mark.parametrize("how", ["deleted", "replaced by a stale copy", "replaced by a foreign file"])
def test_journal_put_back_when_its_file_is_swapped_under_the_run(tmp_path, how):
    """`git stash` once swapped a running collection's journal for a stale copy: every later
    sample went to the orphaned inode. Now the next append notices and rewrites the journal."""
    from hybridllm.stages.journal import Journal

    p = tmp_path / "j.jsonl"
    j = Journal(p, settings={"s": 1})
    rec = [{"id": f"r{i}", "model": "m", "k": 0, "text": str(i)} for i in range(4)]
    j.append(rec[0], rec[1])
    stale = p.read_bytes()
    j.append(rec[2])
    if how == "deleted":
        p.unlink()
    elif how == "replaced by a stale copy":
        p.unlink()
        p.write_bytes(stale)
    else:
        (tmp_path / "x").write_text('{"id": "zz", "model": "other", "k": 0, "text": "?"}\n')
        (tmp_path / "x").replace(p)  # a new file renamed over it, as git and sync tools do
    j.append(rec[3])
    j.close()
    again = Journal(p, settings={"s": 1})
    assert set(again.done) == {(f"r{i}", "m", 0) for i in range(4)}
    assert again.done[("r3", "m", 0)]["text"] == "3"
    foreign = list(tmp_path.glob("j.jsonl.foreign-*"))
    assert (len(foreign) == 1) == (how == "replaced by a foreign file")


def test_ctrl_c_exits_130_promptly_says_where_it_stopped_and_a_rerun_resumes(prompts, upstream, tmp_path):
    """Ctrl-C once exited 0, silently: `collect && score` went on as if the table were finished. Six
    samples are answered; every later request hangs for two minutes, far longer than the test waits
    for the process to end (a liveness bound, not a timing claim)."""
    out = tmp_path / "t.jsonl"
    journal = tmp_path / "t.jsonl.journal.jsonl"
    upstream.faults.extend(["sleep:0"] * 6 + ["sleep:120"] * 34)
    args = collect_cmd(prompts, upstream, out, samples=1, concurrency=2)
    env = {**os.environ, "HYBRIDLLM_NO_PROGRESS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while (len(journaled(journal)) < 6 or len(upstream.requests) < 7) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("collect did not stop on Ctrl-C while its requests were in flight")
    assert proc.returncode == 130, err
    keys = journaled(journal)
    complete = sum(1 for row_id in {k[0] for k in keys} if sum(k[0] == row_id for k in keys) == 2)
    assert err.strip().splitlines()[-1] == (
        f"interrupted: collect stopped at 6 of 40 samples ({complete} of 20 rows complete), kept in {journal}; "
        "rerun the same command to resume"
    )
    assert not out.exists() and len(keys) == 6
    upstream.faults.clear()
    again = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0, again.stderr
    assert "(34 requested now, 6 resumed)" in again.stdout
    assert len(read_table(out)) == 20 and not journal.exists()
