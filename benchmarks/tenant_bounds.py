"""What a tenant can spend and store past the server's bounds: budget caps under concurrent load, the
charge of answers whose client hung up, the outcomes log per feedback post, the request index.

Everything runs against a real ``hybridllm serve`` (the shipped router, client keys, a models file
with prices) on 127.0.0.1, in front of ``benchmarks/tenant_upstream.py``: an OpenAI-protocol
upstream in its own process that generates long answers at a steady pace, reports usage honestly
and keeps its own bill of what it generated (per tenant, read from ``tenant:NAME`` in the prompt).

1. **Per-key overshoot.** Key ``team-a`` sends 64 concurrent long answers to the large model
   (half streamed) against its cap of 10,000 (``--on-cap refuse``; one answer costs up to 2,057),
   while the innocent key ``team-b`` sends 8 short ones (~210 each, each one's bound ~430) against
   its own cap of 3,000, which they fit with their reservations: 4 among team-a's and 4 at once
   after them (when the dearest answer seen, team-a's, costs ten of team-b's). Cold (a fresh server) and warm (after one
   cheap answer), with ``max_tokens`` 1,500 and 10^12 (the model's stated maximum output, 2,048,
   bounds the answer), in one process and on two replicas sharing a real ``redis-server``
   (``--state``). Spend is the upstream's bill × price against the cap; the overshoot is also
   given in units of the dearest single request of that key (its billed cost) and of its bound.
2. **Every answer charged.** 1,000 mixed requests (chat and completions, streamed and not, routed
   and to each model by name, ``max_tokens`` from none to 10^12), 32 at a time, 10 % of them hung
   up by their client at a random point (before the answer or mid-stream): ``hybridllm_cost`` from
   ``/metrics`` against the upstream's bill, once every upstream call has ended.
3. **Outcomes-log bytes per feedback post**, ``--outcomes --log-prompts``, on 100 kB prompts, with
   repeated posts on one request id.
4. **Memory of the request index** after 100,000 requests (in process, tracemalloc), and the size of
   the SQLite one (``--workers N``) on disk.

    python benchmarks/tenant_bounds.py            # writes benchmarks/results/tenant_bounds.json (~3 min)
    python benchmarks/tenant_bounds.py --quick --out /tmp/tenant_bounds.json   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
SMALL, LARGE = "qwen2.5-0.5b", "qwen2.5-1.5b"  # the shipped router's pair
PRICE = {SMALL: 250_000.0, LARGE: 1_000_000.0}  # per 1M tokens, in and out: a large token costs 1
MAX_OUT = {LARGE: 2048}  # stated in the models file; the small model takes serve's default
KEYS = "team-a:ka,team-b:kb"
CAP = 10_000.0  # team-a's cap per day in section 1: about six of its long answers
INNOCENT_CAP = 3_000.0  # team-b's: its 8 short answers (~210 each, bound ~430) fit, with their reservations
HUGE = 10**12
SRC: Path | None = None  # --src: serve from this source tree instead (an older release, for comparison)
STEP_S, WORDS_PER_STEP = 0.004, 16  # the upstream's pace (tenant_upstream.py)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, path: str = "/health", proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"the server on port {port} did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Upstream:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        cmd = [sys.executable, str(REPO / "benchmarks/tenant_upstream.py"), "--port", str(self.port)]
        cmd += [f"--max-out={m}={n}" for m, n in MAX_OUT.items()]
        self.proc = subprocess.Popen(cmd, stdout=(tmp / "upstream.log").open("wb"), stderr=subprocess.STDOUT)
        wait_port(self.port, "/bill", self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def bill(self) -> dict[str, Any]:
        return dict(httpx.get(f"http://127.0.0.1:{self.port}/bill").json())

    def reset(self) -> None:
        httpx.post(f"http://127.0.0.1:{self.port}/reset")

    def settled(self, timeout: float = 90) -> dict[str, Any]:
        """The bill once no upstream call is open (and a moment for the proxy to count the last)."""
        deadline = time.time() + timeout
        while self.bill()["active"] and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        return self.bill()


def cost(rows: dict[str, list[int]]) -> float:
    """What a tenant's (or everyone's) billed tokens cost: {model: [prompt, completion, ...]}."""
    return sum(PRICE[m] * (r[0] + r[1]) / 1e6 for m, r in rows.items())


def billed(bill: dict[str, Any], tenant: str | None = None) -> float:
    tenants = [tenant] if tenant else list(bill["billed"])
    return sum(cost(bill["billed"].get(t, {})) for t in tenants)


def _knows_max_out() -> bool:
    """Whether the served code reads ``max_output_tokens`` (older releases refuse the key)."""
    return SRC is None or "max_output_tokens" in (SRC / "src/hybridllm/tables/registry.py").read_text()


def models_file(tmp: Path, up: Upstream) -> Path:
    p = tmp / "models.toml"
    text = ""
    for m in (SMALL, LARGE):
        text += f'[models."{m}"]\nspec = "{m}@{up.url}"\nprice_in = {PRICE[m]}\nprice_out = {PRICE[m]}\n'
        text += f"max_output_tokens = {MAX_OUT[m]}\n" if m in MAX_OUT and _knows_max_out() else ""
    p.write_text(text)
    return p


@contextlib.contextmanager
def serving(tmp: Path, up: Upstream, extra: list[str], replicas: int = 1) -> Iterator[list[tuple[int, Path]]]:
    """``replicas`` fresh ``hybridllm serve`` processes (keys, the models file): [(port, access log)]."""
    procs, out = [], []
    try:
        for _ in range(replicas):
            port = free_port()
            log = tmp / f"serve-{port}.log"
            cmd = [sys.executable, "-m", "hybridllm.cli", "serve", "--models-file", str(models_file(tmp, up))]
            cmd += ["--port", str(port), "--serve-api-key-env", "HLLM_KEYS", *extra]
            env = {**os.environ, "HLLM_KEYS": KEYS, "HYBRIDLLM_NO_PROGRESS": "1"}
            if SRC is not None:
                env["PYTHONPATH"] = str(SRC / "src")
            procs.append(subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env))
            out.append((port, log))
        for (port, _), proc in zip(out, procs, strict=True):
            wait_port(port, proc=proc)
        yield out
    finally:
        for proc in procs:
            stop(proc)


def counted(logs: list[Path]) -> dict[str, float]:
    """What the proxies' access logs charged per key (each answer's ``cost``)."""
    got: dict[str, float] = {}
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"cost"' in line:
                rec = json.loads(line)
                if "event" not in rec and isinstance(rec.get("cost"), int | float):
                    got[rec.get("key") or "-"] = got.get(rec.get("key") or "-", 0.0) + rec["cost"]
    return got


def bound_cost(body: dict[str, Any], model: str) -> float | None:
    """A request's own bound (what serve reserves for it), priced; None where serve has none."""
    try:
        from hybridllm.serve.settle import DEFAULT_MAX_OUTPUT_TOKENS, token_bound
    except ImportError:
        return None
    usage = token_bound(dict(body, model=model)).usage(MAX_OUT.get(model, DEFAULT_MAX_OUTPUT_TOKENS))
    return PRICE[model] * (usage["prompt_tokens"] + usage["completion_tokens"]) / 1e6


async def post(client: Any, url: str, key: str, body: dict[str, Any], kind: str = "chat") -> int:
    """One request read to its end: its status (0: no answer)."""
    path = "/chat/completions" if kind == "chat" else "/completions"
    async with client.post(url + path, json=body, headers={"authorization": f"Bearer {key}"}) as r:
        await r.read()
        return int(r.status)


# --- 1. per-key overshoot ------------------------------------------------------------------------


async def _flood(urls: list[str], concurrent: int, max_tokens: int, innocent: int) -> tuple[list[int], list[int]]:
    """team-a's ``concurrent`` long answers at once; team-b's ``innocent`` short ones, half among
    them and half at once after them (once team-a's dear answers are known)."""
    import aiohttp

    def body(i: int) -> dict[str, Any]:
        text = f"tenant:a words:3000 write at length about item {i}"
        return {"model": LARGE, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
                "stream": i % 2 == 0}  # fmt: skip

    calm = {"model": LARGE, "messages": [{"role": "user", "content": "tenant:b words:200 a short note"}],
            "max_tokens": 256}  # fmt: skip
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=300)) as client:
        flood = [asyncio.ensure_future(post(client, urls[i % len(urls)], "ka", body(i))) for i in range(concurrent)]
        await asyncio.sleep(0.05)  # team-a's reservations are in: team-b's first requests come among them
        among = [asyncio.ensure_future(post(client, urls[i % len(urls)], "kb", calm)) for i in range(innocent // 2)]
        got = list(await asyncio.gather(*flood))
        calm_got = list(await asyncio.gather(*among))
        after = [post(client, urls[i % len(urls)], "kb", calm) for i in range(innocent - innocent // 2)]
        return got, calm_got + list(await asyncio.gather(*after))


def overshoot_run(tmp: Path, up: Upstream, redis: int | None, warm: bool, max_tokens: int, concurrent: int) -> dict:
    extra = ["--budget-cap", f"team-a={CAP:g}/day", "--budget-cap", f"team-b={INNOCENT_CAP:g}/day"]
    extra += ["--on-cap", "refuse"]
    replicas = 1
    if redis is not None:
        import redis as redis_lib

        redis_lib.Redis(port=redis).flushdb()
        extra += ["--state", f"redis://127.0.0.1:{redis}/0"]
        replicas = 2
    up.reset()
    with serving(tmp, up, extra, replicas) as servers:
        urls = [f"http://127.0.0.1:{p}/v1" for p, _ in servers]
        if warm:  # one cheap answer first: what a server that learns reservations from answers would learn
            cheap = {"model": LARGE, "messages": [{"role": "user", "content": "tenant:a words:2 hi"}], "max_tokens": 2}
            httpx.post(urls[0] + "/chat/completions", json=cheap, headers={"authorization": "Bearer ka"}, timeout=60)
        got, calm = asyncio.run(_flood(urls, concurrent, max_tokens, 8))
        bill = up.settled()
        charged = counted([log for _, log in servers])
    spend = billed(bill, "a")
    largest = max(PRICE[m] * sum(pc) / 1e6 for m, pc in bill["largest"]["a"].items())
    body = {"messages": [{"role": "user", "content": "tenant:a words:3000 write at length about item 10"}],
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    bound = bound_cost(body, LARGE)
    over = spend - CAP
    return {
        "deployment": "2 replicas, Redis" if redis is not None else "1 process",
        "start": "warm" if warm else "cold",
        "max_tokens": max_tokens,
        "concurrent": concurrent,
        "cap": CAP,
        "spend": round(spend, 1),
        "spend_over_cap": round(spend / CAP, 3),
        "overshoot": round(max(0.0, over), 1),
        "largest_request_cost": round(largest, 1),
        "request_bound": None if bound is None else round(bound, 1),
        "overshoot_in_requests": round(max(0.0, over) / largest, 2),
        "overshoot_in_bounds": None if bound is None else round(max(0.0, over) / bound, 2),
        "answered": sum(s == 200 for s in got),
        "refused": sum(s == 429 for s in got),
        "counted_by_proxy": round(charged.get("team-a", 0.0), 1),
        "innocent_answered": sum(s == 200 for s in calm),
        "innocent_refused": sum(s != 200 for s in calm),
        "innocent_cap": INNOCENT_CAP,
        "innocent_spend": round(billed(bill, "b"), 1),
    }


def redis_server(tmp: Path) -> tuple[subprocess.Popen, int]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            if time.time() > deadline:
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)


# --- 2. every answer charged ---------------------------------------------------------------------


def _mixed(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` requests: kind, stream, model, answer length, max_tokens, and where a tenth of them hang
    up: a non-streamed one at a random time before its answer is ready, a streamed one either before
    its first byte or after a random share of its answer's bytes."""
    rnd = random.Random(seed)
    hang = set(rnd.sample(range(n), n // 10))
    out = []
    for i in range(n):
        words = rnd.randint(20, 600)
        max_tokens = rnd.choice([None, 128, 1024, HUGE])
        made = min([words, 4096, *([max_tokens] if max_tokens else [])])  # under any model's maximum here
        steps = made // WORDS_PER_STEP + 1
        r: dict[str, Any] = {
            "tenant": rnd.choice("ab"), "kind": "chat" if rnd.random() < 0.7 else "completions",
            "stream": rnd.random() < 0.5, "model": rnd.choice(["hybrid", "hybrid", SMALL, LARGE]), "words": words,
            "max_tokens": max_tokens, "i": i, "hang_up_s": None, "hang_up_bytes": None,
        }  # fmt: skip
        if i in hang and r["stream"] and rnd.random() < 0.5:
            r["hang_up_bytes"] = max(1, int(rnd.uniform(0.05, 0.9) * steps * 150))  # ~150 bytes an event
        elif i in hang:
            r["hang_up_s"] = rnd.uniform(0.002, 0.9 * steps * STEP_S if not r["stream"] else 0.004)
        out.append(r)
    return out


async def _one(client: Any, url: str, r: dict[str, Any]) -> str:
    """One request as its client makes it: read to the end, or hung up (at ``hang_up_s`` or after
    ``hang_up_bytes``); the outcome says where."""
    text = f"tenant:{r['tenant']} words:{r['words']} question number {r['i']} about the weather"
    body: dict[str, Any] = {"model": r["model"], "stream": r["stream"]}
    body.update({"messages": [{"role": "user", "content": text}]} if r["kind"] == "chat" else {"prompt": text})
    if r["max_tokens"] is not None:
        body["max_tokens"] = r["max_tokens"]
    key = "ka" if r["tenant"] == "a" else "kb"
    path = "/chat/completions" if r["kind"] == "chat" else "/completions"
    seen = 0
    try:
        async with asyncio.timeout(r["hang_up_s"] or 300):
            async with client.post(url + path, json=body, headers={"authorization": f"Bearer {key}"}) as resp:
                async for chunk in resp.content.iter_any():
                    seen += len(chunk)
                    if r["hang_up_bytes"] and seen >= r["hang_up_bytes"]:
                        return "hung up mid-stream"  # the connection closes with the response (force_close)
                return "answered" if resp.status == 200 else f"status {resp.status}"
    except TimeoutError:
        return "hung up mid-stream" if seen else "hung up before the answer"


async def _drive(url: str, reqs: list[dict[str, Any]], concurrency: int) -> list[str]:
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    conn = aiohttp.TCPConnector(limit=0, force_close=True)  # a hang-up closes its own connection
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=300)) as client:

        async def run(r: dict[str, Any]) -> str:
            async with sem:
                return await _one(client, url, r)

        return list(await asyncio.gather(*(run(r) for r in reqs)))


def metric_cost(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"authorization": "Bearer ka"}).text
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("hybridllm_cost_total{"))


def charging_run(tmp: Path, up: Upstream, n: int, concurrency: int) -> dict:
    reqs = _mixed(n, seed=33)
    up.reset()
    extra = ["--budget-cap", "team-a=1e9/day", "--budget-cap", "team-b=1e9/day", "--on-cap", "refuse"]
    with serving(tmp, up, extra) as [(port, log)]:
        t0 = time.time()
        outcomes = asyncio.run(_drive(f"http://127.0.0.1:{port}/v1", reqs, concurrency))
        wall = time.time() - t0
        bill = up.settled()
        seen, deadline = -1.0, time.time() + 30
        while (now := metric_cost(port)) != seen and time.time() < deadline:  # until the proxy's count stops moving
            seen = now
            time.sleep(0.5)
        charged = counted([log])
    total, reported = billed(bill), cost(bill["reported"])
    per_key = {
        k: {"upstream": round(billed(bill, t), 1), "counted": round(charged.get(k, 0.0), 1)}
        for k, t in (("team-a", "a"), ("team-b", "b"))
    }
    kinds: dict[str, int] = {}
    for o in outcomes:
        kinds[o] = kinds.get(o, 0) + 1
    return {
        "requests": n,
        "concurrency": concurrency,
        "wall_s": round(wall, 1),
        "outcomes": kinds,
        "upstream_billed": round(total, 1),
        "upstream_reported": round(reported, 1),
        "counted": round(seen, 1),
        "counted_ratio": round(seen / total, 4) if total else None,
        "gap": "none" if abs(seen - total) < 1e-6 else ("over-counted" if seen > total else "under-counted"),
        "upstream_calls_cut": bill["hung_up"],
        "per_key": per_key,
    }


# --- 3. outcomes-log bytes per feedback post -----------------------------------------------------


def feedback_run(tmp: Path, up: Upstream, requests: int, repeats: int, prompt_kb: int) -> dict:
    outcomes = tmp / "outcomes.jsonl"
    filler = " ".join(["lorem"] * (prompt_kb * 1000 // 6))
    with serving(tmp, up, ["--outcomes", str(outcomes), "--log-prompts"]) as [(port, _)]:
        base = f"http://127.0.0.1:{port}/v1"
        auth = {"authorization": "Bearer ka"}
        rids = []
        for i in range(requests):
            body = {"model": "hybrid", "messages": [{"role": "user", "content": f"tenant:c words:8 {i} {filler}"}]}
            r = httpx.post(base + "/chat/completions", json=body, headers=auth, timeout=60)
            r.raise_for_status()
            rids.append(r.headers["x-hybridllm-request-id"])
        time.sleep(1.0)  # a request can be named once its answer has been sent

        def size() -> int:
            return outcomes.stat().st_size if outcomes.exists() else 0

        first, statuses = [], []
        for rid in rids:
            before = size()
            r = httpx.post(base + "/feedback", json={"request_id": rid, "score": 0.8}, headers=auth)
            statuses.append(r.status_code)
            first.append(size() - before)
        before = size()
        repeat = [
            httpx.post(base + "/feedback", json={"request_id": rids[0], "score": 0.1}, headers=auth).status_code
            for _ in range(repeats)
        ]
        repeat_bytes = size() - before
    prompt_bytes = len(json.dumps([{"role": "user", "content": f"tenant:c words:8 0 {filler}"}]))
    posts = requests + repeats
    return {
        "prompt_bytes": prompt_bytes,
        "requests": requests,
        "first_posts_recorded": statuses.count(200),
        "first_post_bytes_mean": round(sum(first) / len(first)),
        "first_post_bytes_beyond_prompt": round(sum(first) / len(first) - prompt_bytes),
        "repeated_posts": repeats,
        "repeated_statuses": {str(s): repeat.count(s) for s in sorted(set(repeat))},
        "repeated_post_bytes_mean": round(repeat_bytes / max(repeats, 1), 1),
        "log_bytes": size(),
        "bytes_per_post": round(size() / posts),
        "prompt_logged_every_post_would_be": prompt_bytes * posts,
    }


# --- 4. the request index ------------------------------------------------------------------------


def index_run(tmp: Path, n: int) -> list[dict]:
    from hybridllm.serve.control.request_index import Entry, SqliteIndex, index_memory

    short = [{"role": "user", "content": "How many pens do 12 dollars buy at 3 pens for 2 dollars? " * 3}]
    large = [{"role": "user", "content": "lorem " * 1700}]  # 10 kB
    rows = []
    for name, prompt in (("no prompts logged", None), ("short prompt logged", short), ("10 kB prompt logged", large)):
        t = time.perf_counter()
        m = index_memory(n, prompt) if prompt is not None else _no_prompt(n)
        rows.append({"store": "memory", "prompts": name, **m, "seconds": round(time.perf_counter() - t, 2)})
    db = tmp / "requests.sqlite"
    idx = SqliteIndex(str(db), 64 << 20)
    text = json.dumps(short)
    t = time.perf_counter()
    for i in range(n):
        idx._tx(idx._remember, f"req-{i:012x}", Entry("model-a", "team-a", text))
    seconds = time.perf_counter() - t
    entries = idx._db.execute("SELECT count(*) FROM req").fetchone()[0]
    idx._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    asyncio.run(idx.close())
    disk = sum(p.stat().st_size for p in tmp.glob("requests.sqlite*"))
    rows.append({"store": "sqlite", "prompts": "short prompt logged", "requests": n, "disk_bytes": disk,
                 "entries": entries, "seconds": round(seconds, 2)})  # fmt: skip
    return rows


def _no_prompt(n: int) -> dict[str, int]:
    """index_memory without a prompt: what the index keeps when prompts are not logged (the default)."""
    import tracemalloc

    from hybridllm.serve.control.request_index import Entry, MemoryIndex

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = MemoryIndex(64 << 20)
        for i in range(n):
            index.add(f"req-{i:012x}", Entry("model-a", "team-a"))
        heap = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return {"requests": n, "heap_bytes": heap, "counted_bytes": index.bytes, "entries": len(index)}


# --- the run -------------------------------------------------------------------------------------


def git_commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True, cwd=REPO)
    return head.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: fewer configurations and requests")
    ap.add_argument("--only", nargs="+", choices=["overshoot", "charging", "feedback", "index"], help="these sections")
    ap.add_argument("--src", type=Path, help="serve from this source tree (e.g. a `git archive` of a release)")
    ap.add_argument("--src-commit", help="the commit --src is (for the JSON)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/tenant_bounds.json"))
    args = ap.parse_args()
    global SRC
    SRC = args.src
    t0 = time.time()
    q = args.quick
    tmp = Path(tempfile.mkdtemp(prefix="hybridllm-tenant-"))
    up = Upstream(tmp)
    rproc, rport = redis_server(tmp)
    got: dict[str, Any] = {}
    want = args.only or ["overshoot", "charging", "feedback", "index"]
    try:
        if "overshoot" in want:
            got["overshoot"] = []
            for redis in [None, rport]:
                for warm in [False] if q else [False, True]:
                    for max_tokens in [HUGE] if q else [1500, HUGE]:
                        r = overshoot_run(tmp, up, redis, warm, max_tokens, 16 if q else 64)
                        got["overshoot"].append(r)
                        print(f"overshoot: {r}", flush=True)
        if "charging" in want:
            got["charging"] = charging_run(tmp, up, 100 if q else 1000, 32)
            print(f"charging: {got['charging']}", flush=True)
        if "feedback" in want:
            got["feedback"] = feedback_run(tmp, up, 3 if q else 10, 10 if q else 100, 100)
            print(f"feedback: {got['feedback']}", flush=True)
        if "index" in want:
            got["index"] = index_run(tmp, 10_000 if q else 100_000)
    finally:
        stop(up.proc)
        stop(rproc)
        shutil.rmtree(tmp, ignore_errors=True)
    _table(got)
    payload = {
        "benchmark": "tenant_bounds",
        "commit": args.src_commit if args.src else git_commit(),
        "command": "python benchmarks/tenant_bounds.py"
        + (" --quick" if q else "")
        + (" --only " + " ".join(args.only) if args.only else "")
        + (f" --src DIR --src-commit {args.src_commit}" if args.src else ""),
        "cpus": os.cpu_count(),
        "seconds": round(time.time() - t0),
        "prices_per_1m": PRICE,
        "max_output_tokens": MAX_OUT,
        **got,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {out} ({payload['seconds']} s)")


def _table(got: dict[str, Any]) -> None:
    if "overshoot" in got:
        print(f"\n{'deployment':<18} {'start':<5} {'max_tokens':>17} {'spend/cap':>9} {'over (requests)':>15} "
              f"{'answered':>8} {'innocent refused':>16}")  # fmt: skip
        for r in got["overshoot"]:
            print(f"{r['deployment']:<18} {r['start']:<5} {r['max_tokens']:>17,} {r['spend_over_cap']:>9.3f} "
                  f"{r['overshoot_in_requests']:>15.2f} {r['answered']:>8} {r['innocent_refused']:>16}")  # fmt: skip
    if "charging" in got:
        c = got["charging"]
        print(f"\ncharged: {c['counted']:,.1f} of the upstream's {c['upstream_billed']:,.1f} "
              f"({c['counted_ratio']:.2%}, {c['gap']}); outcomes {c['outcomes']}")  # fmt: skip
    if "feedback" in got:
        f = got["feedback"]
        print(f"feedback: {f['first_post_bytes_mean']:,} B per first post on a {f['prompt_bytes']:,} B prompt, "
              f"{f['repeated_post_bytes_mean']:g} B per repeated post {f['repeated_statuses']}")  # fmt: skip
    for r in got.get("index", []):
        mib = r.get("heap_bytes", r.get("disk_bytes", 0)) / 2**20
        size = f"{mib:.1f} MiB " + ("heap" if "heap_bytes" in r else "disk")
        print(f"index ({r['store']}, {r['prompts']}): {size}, {r['entries']:,} entries of {r['requests']:,}")


if __name__ == "__main__":
    main()
