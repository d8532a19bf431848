"""/v1/feedback and the outcomes log under a hostile tenant, against real `hybridllm serve` processes
on 127.0.0.1: forged scores, floods of posts on one request, prompts repeated into the log, an
index that would keep every prompt, workers and replicas that do not share what they served, and
a tool-call chat that used to make the exported table unreadable."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from hybridllm import default_router_dir, read_table
from hybridllm.serve.control.request_index import Entry, MemoryIndex, index_memory
from hybridllm.stages.outcomes import outcomes_table, read_outcomes

from .helpers.cli import run
from .helpers.fake_openai import FakeOpenAI
from .helpers.net import free_port
from .helpers.procs import running_serve
from .helpers.redis import start_redis

pytestmark = pytest.mark.slow  # `hybridllm serve` subprocesses

KEYS = {"HLLM_KEYS": "team-a:ka,team-b:kb"}


def _args(s_url: str, l_url: str, port: int, log: Path, *more: str) -> list[str]:
    return [
        "--router", str(default_router_dir()), "--small", f"s@{s_url}", "--large", f"l@{l_url}",
        "--port", str(port), "--outcomes", str(log), "--serve-api-key-env", "HLLM_KEYS", *more,
    ]  # fmt: skip


def _log(tmp_path: Path) -> Any:
    """The server's output, to a file: an access log with prompts would fill a pipe and stall it."""
    return (tmp_path / f"serve-{time.monotonic_ns()}.log").open("wb")


def _chat(port: int, key: str, messages: list | str) -> str:
    msgs = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
    r = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "hybrid", "messages": msgs, "max_tokens": 4},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.headers["x-hybridllm-request-id"]


def _post(port: int, key: str, body: dict | str) -> httpx.Response:
    # a new connection per post, so that the kernel hands them to any worker
    content = body if isinstance(body, str) else json.dumps(body)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    return httpx.post(f"http://127.0.0.1:{port}/v1/feedback", headers=headers, content=content, timeout=30)


def _feedback(log: Path, rid: str | None = None) -> list[dict]:
    return [r for r in read_outcomes(log) if r["type"] == "feedback" and (rid is None or r["id"] == rid)]


def _post_found(port: int, key: str, body: dict) -> httpx.Response:
    """A post on a request just answered: the index is written after the answer has been sent (off
    the client's path), so a post may come before it; retried while 404, for at most 10 s."""
    deadline = time.time() + 10
    while (r := _post(port, key, body)).status_code == 404 and time.time() < deadline:
        time.sleep(0.05)
    return r


def test_forged_scores_are_refused_naming_score(tmp_path):
    log, port = tmp_path / "o.jsonl", free_port()
    with (
        FakeOpenAI() as s_up,
        FakeOpenAI() as l_up,
        running_serve(_args(s_up.url, l_up.url, port, log), port, env=KEYS, log=_log(tmp_path)),
    ):
        rid = _chat(port, "ka", "What is 2 + 2?")
        scores = ("1e308", "-1", "NaN", "1e999", "1.0000001", "true", '"good"')
        bad = [f'{{"request_id": "{rid}", "score": {v}}}' for v in scores]
        for body in bad:
            r = _post(port, "ka", body)
            assert r.status_code == 400 and r.json()["error"]["param"] == "score", (body, r.text)
        assert _post_found(port, "ka", {"request_id": rid, "score": 0.25}).status_code == 200
        assert _post(port, "kb", {"request_id": rid, "score": 1}).status_code == 404  # not team-b's request
    assert [r["score"] for r in _feedback(log)] == [0.25]


def test_300_posts_on_one_request_make_one_record(tmp_path):
    log, port = tmp_path / "o.jsonl", free_port()
    with (
        FakeOpenAI() as s_up,
        FakeOpenAI() as l_up,
        running_serve(_args(s_up.url, l_up.url, port, log), port, env=KEYS, log=_log(tmp_path)),
    ):
        rid = _chat(port, "ka", "Name a prime number.")
        first = _post_found(port, "ka", {"request_id": rid, "score": 0.5})
        with ThreadPoolExecutor(16) as pool:  # and 299 more, at once
            got = list(pool.map(lambda i: _post(port, "ka", {"request_id": rid, "score": (i % 10) / 10}), range(299)))
    codes = [r.status_code for r in got]
    assert first.status_code == 200 and codes.count(409) == 299, codes
    refused = next(r for r in got if r.status_code == 409).json()["error"]
    assert refused["code"] == "feedback_exists" and refused["param"] == "request_id"
    assert [r["score"] for r in _feedback(log, rid)] == [0.5] and len(read_outcomes(log)) == 1


def test_feedback_posts_do_not_repeat_the_prompt(tmp_path):
    log, port = tmp_path / "o.jsonl", free_port()
    big = "Summarise this: " + "lorem ipsum dolor sit amet " * 20_000  # 540 kB
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        args = _args(s_up.url, l_up.url, port, log, "--log-prompts")
        with running_serve(args, port, env=KEYS, log=_log(tmp_path)):
            rids = [_chat(port, "ka", big) for _ in range(20)]
            for rid in rids:
                assert _post_found(port, "ka", {"request_id": rid, "score": 0.5}).status_code == 200
            before = log.stat().st_size
            for rid in rids:  # the attack: post again and again on the requests with the big prompt
                for _ in range(5):
                    assert _post(port, "ka", {"request_id": rid, "score": 1}).status_code == 409
            assert log.stat().st_size == before
    recs = read_outcomes(log)
    requests = [r for r in recs if r["type"] == "request"]
    assert len(requests) == 20 and all(r["prompt"][0]["content"] == big for r in requests)
    feedback = [r for r in recs if r["type"] == "feedback"]
    assert len(feedback) == 20 and all("prompt" not in r for r in feedback)
    # the bytes each feedback post adds beyond its request's one copy of the prompt
    per_post = (log.stat().st_size - sum(len(json.dumps(r["prompt"])) for r in requests)) / len(feedback)
    assert per_post < 400
    rows, _ = outcomes_table(recs)
    assert len(rows) == 20 and rows[0]["prompt"] == [{"role": "user", "content": big}]


def test_the_request_index_stays_under_its_byte_bound(tmp_path):
    # in a server: 1 MiB of index, 40 answered requests of 100 kB each -> the oldest are forgotten
    log, port = tmp_path / "o.jsonl", free_port()
    text = "Explain this log: " + "x" * 100_000
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        args = _args(s_up.url, l_up.url, port, log, "--log-prompts", "--feedback-index-mb", "1")
        with running_serve(args, port, env=KEYS, log=_log(tmp_path)):
            rids = [_chat(port, "ka", f"{i} {text}") for i in range(40)]
            assert _post_found(port, "ka", {"request_id": rids[-1], "score": 1}).status_code == 200
            assert _post(port, "ka", {"request_id": rids[0], "score": 1}).status_code == 404  # forgotten
    # in memory: what the index holds after many large requests, counted and as Python heap
    got = index_memory(2_000, [{"role": "user", "content": "y" * 20_000}], max_bytes=8 << 20)
    assert got["counted_bytes"] <= 8 << 20 and got["heap_bytes"] <= 9 << 20 and got["entries"] < 2_000
    small = index_memory(100_000, "What is 2 + 2?", max_bytes=8 << 20)
    assert small["counted_bytes"] <= 8 << 20 and small["heap_bytes"] <= 9 << 20
    one = MemoryIndex(1000)
    one.add("req-1", Entry("m", "k", "z" * 5000))
    assert one.bytes <= 1000 and len(one) == 1  # too big to keep whole: who served it, not the prompt


def test_two_workers_find_every_request(tmp_path):
    log, port = tmp_path / "o.jsonl", free_port()
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        args = _args(s_up.url, l_up.url, port, log, "--workers", "2")
        out = (tmp_path / "serve.log").open("wb")
        with running_serve(args, port, env=KEYS, log=out, timeout=120):
            rids = [_chat(port, "ka", f"What is {i} * 3?") for i in range(40)]
            got = [_post_found(port, "ka", {"request_id": rid, "score": 0.5}) for rid in rids]
            again = [_post(port, "ka", {"request_id": rid, "score": 1}) for rid in rids[:10]]
            foreign = [_post(port, "kb", {"request_id": rid, "score": 1}) for rid in rids[10:20]]
        out.close()
    assert [r.status_code for r in got] == [200] * 40
    assert [r.status_code for r in again] == [409] * 10 and [r.status_code for r in foreign] == [404] * 10
    assert sorted(r["id"] for r in _feedback(log)) == sorted(rids)
    workers = {
        json.loads(x)["worker"] for x in (tmp_path / "serve.log").read_text().splitlines() if x.startswith('{"id"')
    }
    assert len(workers) == 2  # both workers answered requests


def test_two_replicas_on_one_redis_share_feedback(tmp_path):
    rproc, rport = start_redis(tmp_path)
    try:
        with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
            ports = [free_port(), free_port()]
            logs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
            state = ["--state", f"redis://127.0.0.1:{rport}/0", "--log-prompts"]
            with (
                running_serve(
                    _args(s_up.url, l_up.url, ports[0], logs[0], *state), ports[0], env=KEYS, log=_log(tmp_path)
                ),
                running_serve(
                    _args(s_up.url, l_up.url, ports[1], logs[1], *state), ports[1], env=KEYS, log=_log(tmp_path)
                ),
            ):
                rids = [_chat(ports[0], "ka", f"Who wrote play number {i}?") for i in range(10)]
                # posted to the replica that did not serve them
                got = [_post_found(ports[1], "ka", {"request_id": rid, "score": 0.75}) for rid in rids]
                again = [_post(ports[0], "ka", {"request_id": rid, "score": 0.0}) for rid in rids]
                foreign = _post(ports[1], "kb", {"request_id": rids[0], "score": 0.0})
    finally:
        rproc.terminate()
        rproc.wait(timeout=10)
    assert [r.status_code for r in got] == [200] * 10 and [r.status_code for r in again] == [409] * 10
    assert foreign.status_code == 404
    assert _feedback(logs[0]) == [] and len(_feedback(logs[1])) == 10
    rows, _ = outcomes_table(read_outcomes(logs[1]))  # the prompt came through Redis to the other replica
    assert len(rows) == 10 and rows[0]["prompt"][0]["content"].startswith("Who wrote play number")


TOOL_CHAT = [
    {"role": "system", "content": "You can look up the weather."},
    {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                                 {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"c": 1}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "18 C, cloudy"}]},
    {"role": "assistant", "tool_calls": [{"id": "c2", "type": "function", "function": {"name": "f"}}]},
    {"role": "tool", "tool_call_id": "c2", "content": "ok"},
    {"role": "user", "content": "And tomorrow?"},
]  # fmt: skip


def test_a_tool_call_chat_exports_to_a_table_split_reads(tmp_path):
    log, port = tmp_path / "o.jsonl", free_port()
    args = ["--log-prompts"]
    with (
        FakeOpenAI() as s_up,
        FakeOpenAI() as l_up,
        running_serve(_args(s_up.url, l_up.url, port, log, *args), port, env=KEYS, log=_log(tmp_path)),
    ):
        rids = [_chat(port, "ka", TOOL_CHAT), *(_chat(port, "ka", f"Plain question {i}?") for i in range(9))]
        for rid in rids:
            assert _post_found(port, "ka", {"request_id": rid, "score": 0.5}).status_code == 200
    # an older server's records, whose shapes a table cannot hold, are left out and counted
    with log.open("a") as fh:
        fh.write(json.dumps({"type": "feedback", "id": "old-1", "score": 1, "prompt": 5}) + "\n")
        fh.write(json.dumps({"type": "feedback", "id": "old-2", "score": 1e308, "prompt": "hi"}) + "\n")
    out = tmp_path / "served.jsonl"
    done = run("outcomes", "export", str(log), "--output", str(out))
    assert "wrote 10 rows" in done.stderr + done.stdout and "1 not_a_chat" in done.stderr + done.stdout
    rows = {r["id"]: r for r in read_table(out)}
    tool = rows[rids[0]]["prompt"]
    assert [m["role"] for m in tool] == [m["role"] for m in TOOL_CHAT]
    assert all(isinstance(m["content"], str) for m in tool)
    assert (
        tool[1]["content"] == "Weather in Paris?" and tool[2]["content"] == "" and tool[3]["content"] == "18 C, cloudy"
    )
    parts = tmp_path / "parts"
    run("split", str(out), "--output-dir", str(parts), "--into", "train=0.5,test=0.5")
    assert sum(len(read_table(parts / f"{n}.jsonl")) for n in ("train", "test")) == 10


def test_feedback_flood_is_rate_limited_per_key(tmp_path):
    log, port = tmp_path / "o.jsonl", free_port()
    args = ["--feedback-per-minute", "5"]
    with (
        FakeOpenAI() as s_up,
        FakeOpenAI() as l_up,
        running_serve(_args(s_up.url, l_up.url, port, log, *args), port, env=KEYS, log=_log(tmp_path)),
    ):
        rids = [_chat(port, "ka", f"Question {i}?") for i in range(8)]
        other = _chat(port, "kb", "Team b's question?")
        if time.time() % 60 > 50:  # the limit counts per minute: start the flood in a fresh one
            time.sleep(61 - time.time() % 60)
        time.sleep(0.5)  # the index writes after the answers
        got = [_post(port, "ka", {"request_id": rid, "score": 1}) for rid in rids]
        theirs = _post(port, "kb", {"request_id": other, "score": 1})
    assert [r.status_code for r in got] == [200] * 5 + [429] * 3
    err = got[-1].json()["error"]
    assert "--feedback-per-minute" in err["message"] and err["type"] == "rate_limit_error"
    assert int(got[-1].headers["retry-after"]) >= 1
    assert theirs.status_code == 200  # another key's posts are its own
    assert len(_feedback(log)) == 6


@pytest.mark.parametrize("score", [0, 1, 0.5])
def test_scores_at_the_bounds_are_taken(score, tmp_path):
    log, port = tmp_path / "o.jsonl", free_port()
    with (
        FakeOpenAI() as s_up,
        FakeOpenAI() as l_up,
        running_serve(_args(s_up.url, l_up.url, port, log), port, env=KEYS, log=_log(tmp_path)),
    ):
        rid = _chat(port, "ka", "Hello?")
        assert _post_found(port, "ka", {"request_id": rid, "score": score}).status_code == 200
    assert [r["score"] for r in _feedback(log)] == [float(score)]


@pytest.mark.parametrize("shared", ["workers", "redis"])
def test_request_ids_the_shared_index_cannot_hold_are_a_400(shared, tmp_path):
    # the attack: ids no server sent (a lone surrogate, which neither SQLite nor Redis can encode,
    # non-ASCII, 9 kB) posted to a server whose index is shared; they used to be a 500 from the
    # workers' SQLite, and with Redis they silenced its one "Redis unreachable" warning for good
    log, port, out = tmp_path / "o.jsonl", free_port(), tmp_path / "serve.log"
    rproc = None
    if shared == "redis":
        rproc, rport = start_redis(tmp_path)
        more = ["--state", f"redis://127.0.0.1:{rport}/0"]
    else:
        more = ["--workers", "2"]
    try:
        with (
            FakeOpenAI() as s_up,
            FakeOpenAI() as l_up,
            out.open("wb") as fh,
            running_serve(_args(s_up.url, l_up.url, port, log, *more), port, env=KEYS, log=fh, timeout=120),
        ):
            rid = _chat(port, "ka", "What is 6 * 7?")
            forged = ['{"request_id": "\\ud800", "score": 1}', '{"request_id": "req-\\u00e9", "score": 1}',
                      json.dumps({"request_id": "r" * 9_000, "score": 1})]  # fmt: skip
            got = [_post(port, "ka", body) for body in forged]
            ok = _post_found(port, "ka", {"request_id": rid, "score": 0.5})
    finally:
        if rproc is not None:
            rproc.terminate()
            rproc.wait(timeout=10)
    for r in got:
        assert r.status_code == 400 and r.json()["error"]["param"] == "request_id", r.text
    assert ok.status_code == 200 and [r["id"] for r in _feedback(log)] == [rid]
    text = out.read_text()
    assert "Traceback" not in text and "Redis unreachable" not in text, text[-2000:]
