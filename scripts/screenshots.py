"""Screenshots for the README (docs/img/dashboard.png, docs/img/report.png): the dashboard of a real
`hybridllm serve` (shipped default router, two fake OpenAI-protocol upstreams, one of which fails now
and then so fallbacks show) after a minute of mixed traffic, and an `evaluate --html` report of the
default pair's test split. Needs chromium and playwright (the test extra).

    python scripts/screenshots.py [--seconds 40]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hybridllm import default_router_dir  # noqa: E402
from hybridllm.tables.format import read_table  # noqa: E402
from tests.helpers.browser import browser_page  # noqa: E402
from tests.helpers.fake_openai import FakeOpenAI  # noqa: E402
from tests.helpers.net import free_port  # noqa: E402
from tests.helpers.procs import running_serve  # noqa: E402

SMALL, LARGE = "qwen2.5-0.5b", "qwen2.5-1.5b"


def traffic(port: int, prompts: list[str], until: float) -> None:
    rng = random.Random(0)
    with httpx.Client(timeout=30) as c:
        while time.time() < until:
            model = rng.choice(["hybrid", "hybrid", "hybrid", "hybrid-qd-5", "hybrid-ca-50"])
            body = {"model": model, "messages": [{"role": "user", "content": rng.choice(prompts)}], "max_tokens": 8}
            c.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
            time.sleep(rng.uniform(0.0, 0.05))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=40)
    args = ap.parse_args()
    out = REPO / "docs/img"
    test_split = REPO / "data/default-pair/split/test.jsonl"
    prompts = [r["prompt"] for r in read_table(test_split) if isinstance(r["prompt"], str)]
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        models = Path(tmp) / "models.toml"
        models.write_text(
            f'[models."{SMALL}"]\nspec = "s@{s_up.url}"\nprice_in = 0.05\nprice_out = 0.1\n'
            f'[models."{LARGE}"]\nspec = "l@{l_up.url}"\nprice_in = 0.5\nprice_out = 1.0\n'
        )
        serve = ["--router", str(default_router_dir()), "--small", f"s@{s_up.url}", "--large", f"l@{l_up.url}"]
        log = (Path(tmp) / "serve.log").open("wb")
        with running_serve([*serve, "--models-file", str(models), "--port", str(port)], port, log=log):
            until = time.time() + args.seconds
            workers = [threading.Thread(target=traffic, args=(port, prompts, until)) for _ in range(4)]
            for w in workers:
                w.start()
            time.sleep(args.seconds / 2)
            s_up.faults.extend(["500"] * 6)  # a few small-model failures: fallbacks to the large model
            for w in workers:
                w.join()
            with browser_page(1280, 1000) as (page, errors):
                page.goto(f"http://127.0.0.1:{port}/dashboard")
                page.wait_for_function("document.getElementById('status').textContent.startsWith('live')")
                time.sleep(1.5)
                page.screenshot(path=str(out / "dashboard.png"), full_page=True)
                assert not errors, errors
        report = Path(tmp) / "report.html"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "hybridllm.cli",
                "evaluate",
                str(default_router_dir()),
                str(test_split),
                "--html",
                str(report),
            ],
            check=True,
        )
        with browser_page(1100, 900) as (page, errors):
            page.goto(report.as_uri())
            page.screenshot(path=str(out / "report.png"), full_page=False)
            assert not errors, errors
    print(f"wrote {out / 'dashboard.png'} and {out / 'report.png'}")


if __name__ == "__main__":
    main()
