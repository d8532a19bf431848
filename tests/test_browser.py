"""The dashboard of a running `hybridllm serve` and the `evaluate --html` report, in a real
headless Chromium: they load with no console error, show the numbers, and the knob control works."""

from __future__ import annotations

import json

import httpx
import pytest

from hybridllm import default_router_dir

from .conftest import REPO
from .helpers.browser import browser_page
from .helpers.cli import run
from .helpers.fake_judge import graded, verdict
from .helpers.fake_openai import FakeOpenAI
from .helpers.net import free_port
from .helpers.procs import running_serve

pytestmark = pytest.mark.slow  # a real Chromium against `hybridllm serve` subprocesses

SMALL, LARGE = "qwen2.5-0.5b", "qwen2.5-1.5b"  # the shipped default router's pair
QUESTIONS = [
    "What is 2 + 3?",
    "Prove that there are infinitely many primes.",
    "Translate 'good morning' into French.",
    "A train leaves at 3 pm at 60 km/h; another at 4 pm at 90 km/h. When does the second catch up?",
]


def _chat(port: int, model: str, text: str, key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8}
    return httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=headers, timeout=30)


def test_dashboard_shows_live_traffic_and_its_knob_steers_routing(tmp_path):
    port = free_port()
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        models = tmp_path / "models.toml"
        models.write_text(
            f'[models."{SMALL}"]\nspec = "s@{s_up.url}"\nprice_in = 0.1\nprice_out = 0.2\n'
            f'[models."{LARGE}"]\nspec = "l@{l_up.url}"\nprice_in = 1.0\nprice_out = 2.0\n'
        )
        args = ["--router", str(default_router_dir()), "--small", f"s@{s_up.url}", "--large", f"l@{l_up.url}"]
        with running_serve([*args, "--models-file", str(models), "--port", str(port)], port) as proc:
            base = f"http://127.0.0.1:{port}"
            with browser_page() as (page, errors):
                page.goto(f"{base}/dashboard")
                page.wait_for_function("document.getElementById('status').textContent.startsWith('live')")
                assert page.inner_text("#total-requests") == "0"
                for i in range(24):
                    assert _chat(port, "hybrid" if i % 2 else SMALL, QUESTIONS[i % 4]).status_code == 200
                # the page polls once a second: it shows what went through the proxy
                page.wait_for_function("document.getElementById('total-requests').textContent === '24'")
                page.wait_for_function("document.querySelectorAll('#latency tbody tr').length === 2")
                saved = page.inner_text("#cost-saved")
                assert saved != "n/a" and "%" in saved  # prices known: a saving versus always-large
                data = httpx.get(f"{base}/dashboard/data").json()
                assert data["requests"] == 24 and data["by_model"][SMALL] >= 12
                assert sum(data["score_histogram"]["counts"]) == 12  # only routed requests have a score
                assert len(data["router"]["curve"]["points"]) > 10 and data["router"]["point"] is not None
                assert data["router"]["owner"] == "default" and page.inner_text("#knob-current").endswith(
                    "set by default"
                )
                # counts on the histogram's y axis are whole numbers, up to at least the highest bar
                ticks = (page.get_attribute("#hist", "data-y-ticks") or "").split(",")
                assert len(ticks) == 5 and all(t.isdigit() for t in ticks), ticks
                assert int(ticks[-1]) >= max(data["score_histogram"]["counts"]) and int(ticks[1]) >= 1
                # no keys on this server: no key box (its data says so), nothing to type a key into
                assert data["auth"] is False and page.is_hidden("#api-key")
                page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

                # the knob: everything to the small model (threshold 0), set from the page
                page.fill("#knob-input", "hybrid-t-0")
                page.click("#knob-apply")
                page.wait_for_function("document.getElementById('knob-msg').textContent.includes('hybrid-t-0')")
                routed = [_chat(port, "hybrid", q) for q in QUESTIONS]
                assert {r.headers["x-hybridllm-model"] for r in routed} == {SMALL}
                assert {r.headers["x-hybridllm-threshold"] for r in routed} == {"0.000000"}
                shown = httpx.get(f"{base}/dashboard/data").json()["router"]  # what requests route at, and who set it
                assert (shown["threshold"], shown["owner"]) == (0.0, "knob hybrid-t-0")
                # and back to the strictest point: a threshold above every score sends all to large
                page.fill("#knob-input", "hybrid-t-1")
                page.click("#knob-apply")
                page.wait_for_function("document.getElementById('knob-msg').textContent.includes('hybrid-t-1')")
                assert {_chat(port, "hybrid", q).headers["x-hybridllm-model"] for q in QUESTIONS} == {LARGE}
                # a bad name is refused on the page, and routing keeps the last good knob
                page.fill("#knob-input", "hybrid-qd-lots")
                page.click("#knob-apply")
                page.wait_for_function("document.getElementById('knob-msg').className === 'error'")
                assert "hybrid-qd-lots" in page.inner_text("#knob-msg")
                page.wait_for_function("document.getElementById('knob-current').textContent.includes('hybrid-t-1')")
                assert errors == [] or all("400" in e for e in errors), errors  # only the refused knob
        log = proc.stdout.read().decode()
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{") and '"event"' in line]
    assert [e["to"] for e in events] == ["hybrid-t-0", "hybrid-t-1"]


def test_dashboard_behind_a_key(tmp_path):
    """With client keys, data needs a key and the knob the admin key; the page asks for a key: a
    tenant's shows the data but its knob change is refused on the page, the admin's moves the knob."""
    port = free_port()
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        args = ["--router", str(default_router_dir()), "--small", f"s@{s_up.url}", "--large", f"l@{l_up.url}"]
        env = {"HYBRID_KEYS": "sk-dash-1", "HYBRID_ADMIN": "sk-admin-1"}
        keys = ["--serve-api-key-env", "HYBRID_KEYS", "--admin-key-env", "HYBRID_ADMIN"]
        with running_serve([*args, *keys, "--port", str(port)], port, env=env):
            base = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{base}/dashboard/data").status_code == 401
            r = httpx.post(f"{base}/dashboard/knob", json={"model": "hybrid-t-0"})
            assert r.status_code == 401 and r.json()["error"]["type"]
            assert _chat(port, "hybrid", "hi", key="sk-dash-1").status_code == 200
            with browser_page() as (page, errors):
                page.goto(f"{base}/dashboard")
                page.wait_for_function("document.getElementById('status').textContent.includes('API key')")
                assert page.is_visible("#api-key")  # the data was refused: the page asks for a key
                page.fill("#api-key", "sk-dash-1")
                page.dispatch_event("#api-key", "change")
                page.wait_for_function("document.getElementById('total-requests').textContent === '1'")
                page.fill("#knob-input", "hybrid-t-0")
                page.click("#knob-apply")  # a tenant's key: refused, and the page says which setting
                page.wait_for_function("document.getElementById('knob-msg').className === 'error'")
                assert "--admin-key-env" in page.inner_text("#knob-msg")
                after = _chat(port, "hybrid", QUESTIONS[1], key="sk-dash-1").headers
                assert after["x-hybridllm-threshold"] != "0.000000"  # the knob did not move
                page.fill("#api-key", "sk-admin-1")  # the admin's key reads the data and moves the knob
                page.dispatch_event("#api-key", "change")
                page.wait_for_function("document.getElementById('total-requests').textContent === '2'")
                page.click("#knob-apply")
                page.wait_for_function("document.getElementById('knob-msg').className === 'ok'")
                assert all("status of 40" in e for e in errors), errors  # only the refused key and knob, no JS error
            assert _chat(port, "hybrid", QUESTIONS[1], key="sk-dash-1").headers["x-hybridllm-model"] == SMALL


def test_html_report_opens_in_the_browser(tmp_path, cache_env):
    report = tmp_path / "report.html"
    test_split = REPO / "data/default-pair/split/test.jsonl"
    run("evaluate", str(default_router_dir()), str(test_split), "--html", str(report), "--bootstrap", "300")
    text = report.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text  # self-contained
    with browser_page() as (page, errors):
        page.goto(report.as_uri())
        assert page.locator("#summary tr").count() == 6  # header + router, random, oracle, 2 length baselines
        assert page.locator("#operating-point tr").count() == 3
        assert page.locator("table.breakdown").count() >= 1
        assert page.evaluate("document.querySelector('img').naturalWidth") > 400  # the inlined plot decoded
        assert "[" in page.inner_text("#summary")  # intervals shown
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        assert errors == [], errors


def test_dashboard_shows_the_live_drop_spend_and_the_held_target(tmp_path):
    port = free_port()
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, FakeOpenAI() as j_up:
        s_up.reply = lambda p: "small says hi"
        l_up.reply = lambda p: "large says hi"
        j_up.reply = lambda p: verdict(p, 9 if "large says" in graded(p, "response") else 4)
        args = [
            "--router", str(default_router_dir()), "--small", f"s@{s_up.url}", "--large", f"l@{l_up.url}",
            "--port", str(port), "--shadow-rate", "1", "--judge", f"judge@{j_up.url}", "--hold", "cost_advantage=50",
        ]  # fmt: skip
        with running_serve(args, port), browser_page() as (page, errors):
            page.goto(f"http://127.0.0.1:{port}/dashboard")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('live')")
            for i in range(12):
                assert _chat(port, "hybrid", QUESTIONS[i % 4]).status_code == 200
            page.wait_for_function("document.getElementById('live-drop').textContent.includes('12 pairs')")
            page.wait_for_function("document.getElementById('live-spend').textContent.includes('(last 12)')")
            assert page.inner_text("#hold").startswith("cost_advantage 50%: threshold")
            spend = float(page.inner_text("#live-spend").split("%")[0])
            data = httpx.get(f"http://127.0.0.1:{port}/dashboard/data").json()
            to_small = data["live"]["shares"][SMALL]
            assert abs(spend - (100 - to_small / 2)) < 0.05  # relative costs 1 : 2 without prices
            assert errors == [], errors


def test_a_hold_owns_plain_hybrid_and_the_dashboard_says_what_requests_route_at():
    """Under --hold, the admin knob is refused (409 naming the hold), and the threshold the dashboard
    shows, with its owner, is the one plain hybrid requests are routed at (their headers)."""
    port = free_port()
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, FakeOpenAI() as j_up:
        j_up.reply = lambda p: verdict(p, 7)
        args = [
            "--router", str(default_router_dir()), "--small", f"s@{s_up.url}", "--large", f"l@{l_up.url}",
            "--port", str(port), "--shadow-rate", "1", "--judge", f"judge@{j_up.url}", "--hold", "cost_advantage=50",
        ]  # fmt: skip
        with running_serve(args, port), browser_page() as (page, errors):
            data = f"http://127.0.0.1:{port}/dashboard/data"
            knob = httpx.post(f"http://127.0.0.1:{port}/dashboard/knob", json={"model": "hybrid-t-0.95"})
            assert knob.status_code == 409 and knob.json()["error"]["code"] == "held"
            assert "--hold cost_advantage=50" in knob.json()["error"]["message"]
            router = httpx.get(data).json()["router"]
            assert router["owner"] == "hold cost_advantage=50" and router["knob"] == "hybrid"
            held = httpx.get(data).json()["hold"]["threshold"]
            assert router["threshold"] == held != 0.95
            for i in range(4):  # fewer than the hold's minimum sample: its threshold stays where it started
                r = _chat(port, "hybrid", QUESTIONS[i])
                assert r.status_code == 200 and float(r.headers["x-hybridllm-threshold"]) == pytest.approx(
                    held, abs=1e-6
                )
                assert r.headers["x-hybridllm-reason"].startswith("hold cost_advantage 50")
            # a request's own knob still wins
            own = _chat(port, "hybrid-t-0.95", QUESTIONS[0])
            assert float(own.headers["x-hybridllm-threshold"]) == pytest.approx(0.95)
            page.goto(f"http://127.0.0.1:{port}/dashboard")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('live')")
            now = page.inner_text("#knob-current")
            assert f"threshold {held:.4f}" in now and now.endswith("set by hold cost_advantage=50"), now
            page.fill("#knob-input", "hybrid-qd-2")
            page.click("#knob-apply")  # the page shows the refusal, and nothing changes
            page.wait_for_function("document.getElementById('knob-msg').className === 'error'")
            assert "held by --hold cost_advantage=50" in page.inner_text("#knob-msg")
            assert httpx.get(data).json()["router"]["owner"] == "hold cost_advantage=50"
            assert errors == ["Failed to load resource: the server responded with a status of 409 (Conflict)"], errors


def test_a_default_knob_and_a_hold_together_are_refused_at_start():
    got = run("serve", "--router", str(default_router_dir()), "--small", "s@http://127.0.0.1:9/v1",
              "--large", "l@http://127.0.0.1:9/v1", "--port", str(free_port()), "--default-knob", "hybrid-qd-2",
              "--hold", "cost_advantage=50", ok=False)  # fmt: skip
    assert got.returncode != 0
    assert (
        "--default-knob hybrid-qd-2 and --hold cost_advantage=50 both set what plain hybrid means"
        in got.stderr + got.stdout
    )
