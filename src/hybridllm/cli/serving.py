"""Commands that answer questions: serve, chat."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import _fail, _load_router, _progress, app, err


@app.command()
def serve(
    router_dir: Annotated[
        Path | None, typer.Option("--router", help="router artifact (default: $HYBRIDLLM_ROUTER or the shipped one)")
    ] = None,
    small: Annotated[
        str | None, typer.Option(help="small upstream: MODEL@BASE_URL, a local model name or .gguf")
    ] = None,
    large: Annotated[
        str | None, typer.Option(help="large upstream: MODEL@BASE_URL, a local model name or .gguf")
    ] = None,
    model: Annotated[list[str] | None, typer.Option(help="routers over N models: NAME=SPEC, once per model")] = None,
    models_file: Annotated[
        Path | None, typer.Option(help="models.toml: each model's SPEC, key variable and price")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML file with any of the settings below (see docs/serve.md)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="bind address (default 127.0.0.1)", envvar="HYBRIDLLM_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8000)", envvar="HYBRIDLLM_PORT")] = None,
    api_key_env: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=VAR: the upstream NAME (small, large or its model name) gets the key in $VAR; "
            "repeat per upstream. A bare VAR only when one upstream is HTTP"
        ),
    ] = None,
    serve_api_key_env: Annotated[
        str | None, typer.Option(help="env var with comma-separated keys clients must send (Bearer)")
    ] = None,
    allow_unauthenticated: Annotated[
        bool | None, typer.Option(help="allow a non-loopback --host with no client key")
    ] = None,
    public_metrics: Annotated[
        bool | None, typer.Option(help="serve /metrics and /ready without the client key")
    ] = None,
    fallback: Annotated[
        bool | None, typer.Option(help="retry a routed request on the other model when an upstream fails")
    ] = None,
    route_on: Annotated[
        str | None, typer.Option(help="what the router reads: 'all' user turns or the 'last' one")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="processes on the one port (default 1); each loads the router and its models")
    ] = None,
    shadow_rate: Annotated[
        float | None, typer.Option(help="share of answered requests also answered by the other side and judged (0..1)")
    ] = None,
    judge: Annotated[
        str | None,
        typer.Option(
            help="scorer of shadow pairs: MODEL@BASE_URL, a local model, a models-file name or reward-model:DIR"
        ),
    ] = None,
    judge_api_key_env: Annotated[str | None, typer.Option(help="env var with the judge's API key")] = None,
    shadow_max_tokens: Annotated[
        int | None,
        typer.Option(help="a shadow replay's output cap: min of the request's max_tokens and this [default: 1024]"),
    ] = None,
    shadow_max_prompt_chars: Annotated[
        int | None,
        typer.Option(help="requests whose body holds more characters are not shadow-checked [default: 32000]"),
    ] = None,
    judge_rubric: Annotated[
        Path | None,
        typer.Option(
            help="judge rubric file: {response}, optional {prompt}, {reference} (delimited data; verdict format added)"
        ),
    ] = None,
    hold: Annotated[
        str | None, typer.Option(help="target held on live traffic: max_quality_drop=1, budget=30, cost_advantage=40")
    ] = None,
    hold_confidence: Annotated[
        float | None, typer.Option(help="one-sided confidence of the quality hold's upper bound (default 0.95)")
    ] = None,
    hold_window: Annotated[
        int | None,
        typer.Option(help="requests over which the quality hold's bound holds (0: on the recent mean) [default: 200]"),
    ] = None,
    outcomes: Annotated[
        Path | None, typer.Option(help="outcomes log (shadow pairs, /v1/feedback) for `hybridllm outcomes export`")
    ] = None,
    feedback_per_minute: Annotated[
        int | None, typer.Option(help="/v1/feedback posts per client key and minute (0: no limit) [default: 600]")
    ] = None,
    feedback_index_mb: Annotated[
        int | None,
        typer.Option(help="MiB of answered requests /v1/feedback can name, oldest forgotten first [default: 64]"),
    ] = None,
    budget_cap: Annotated[
        list[str] | None, typer.Option(help="hard spend ceiling KEY=AMOUNT/PERIOD (key name or *), e.g. team-a=5/day")
    ] = None,
    on_cap: Annotated[
        str | None, typer.Option(help="past a ceiling: 'downgrade' to the cheapest model or 'refuse'")
    ] = None,
    state: Annotated[
        str | None,
        typer.Option(help="state shared by replicas (spend counters, the controller's pairs): redis://HOST:PORT/DB"),
    ] = None,
    state_lease: Annotated[
        int | None,
        typer.Option(help="seconds a replica's open budget reservations outlive it (killed mid-request) [default: 30]"),
    ] = None,
    settle_timeout: Annotated[
        float | None,
        typer.Option(
            help="seconds an answer is read on after its client left, for its usage (then charged its bound) "
            "[default: 60]"
        ),
    ] = None,
    state_env: Annotated[
        str | None,
        typer.Option(help="env var holding the --state URL (keeps a Redis password out of `ps`); instead of --state"),
    ] = None,
    admin_key_env: Annotated[
        str | None,
        typer.Option(help="env var with the admin key(s), comma-separated: only they change the default knob"),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="without client keys: a Host name answered beside loopback and --host (repeat; * for any)"),
    ] = None,
    log_prompts: Annotated[
        bool | None, typer.Option(help="put the routed text into the access log and outcomes records")
    ] = None,
    verbose: Annotated[bool, typer.Option(help="also log the HTTP client's per-request lines")] = False,
) -> None:
    """Serve an OpenAI-compatible endpoint that routes each request to the model the router picks
    (small or large, or any of N models)."""
    from hybridllm.serve import ServeConfig
    from hybridllm.serve.runner import run

    cfg = ServeConfig.load(
        config,
        router=router_dir,
        small=small,
        large=large,
        model=model or None,
        models_file=models_file,
        host=host,
        port=port,
        api_key_env=api_key_env or None,
        serve_api_key_env=serve_api_key_env,
        allow_unauthenticated=allow_unauthenticated,
        public_metrics=public_metrics,
        fallback=fallback,
        route_on=route_on,
        workers=workers,
        shadow_rate=shadow_rate,
        judge=judge,
        judge_api_key_env=judge_api_key_env,
        shadow_max_tokens=shadow_max_tokens,
        shadow_max_prompt_chars=shadow_max_prompt_chars,
        judge_rubric=judge_rubric,
        hold=hold,
        hold_confidence=hold_confidence,
        hold_window=hold_window,
        outcomes=outcomes,
        feedback_per_minute=feedback_per_minute,
        feedback_index_mb=feedback_index_mb,
        budget_cap=budget_cap or None,
        on_cap=on_cap,
        state=state,
        state_lease_s=state_lease,
        settle_timeout_s=settle_timeout,
        state_env=state_env,
        admin_key_env=admin_key_env,
        allowed_host=allowed_host or None,
        log_prompts=log_prompts,
    )
    from hybridllm.serve.build import build, load_router

    cfg.options()  # refuses an open non-loopback bind before anything loads
    try:
        router = load_router(cfg)
    except FileNotFoundError as exc:
        _fail(str(exc))
    if cfg.workers > 1:  # each worker builds its own app; this process only binds and supervises
        app_, ups = None, cfg.upstreams(router, load=False)
    else:
        built = build(cfg, _progress, router=router)
        app_, ups = built.app, built.upstreams

    run(app_, cfg, on_bound=lambda bound: _banner(cfg, router, ups, bound), verbose=verbose)


def _banner(cfg: Any, router: Any, ups: Any, bound: int) -> None:
    """What a started server says: where it listens, its upstreams, the names it takes, a request to try."""
    base = f"http://{cfg.host}:{bound}"
    _progress(f"routing {' | '.join(router.models)} on {base}/v1")
    _progress(f"upstreams: {cfg.describe_upstreams(ups)}")
    share = "hybrid-ca-<pct>, hybrid-t-<x>" + (", hybrid-budget-<pct>" if router.fleet.costs_given else "")
    share += ", small, large" if len(router.models) == 2 else ""
    _progress(f"models: hybrid (= {cfg.default_point(router)}), hybrid-qd-<pct>, {share}, each model's name")
    _progress(
        f"try: curl -s {base}/v1/chat/completions -H 'content-type: application/json' "
        """-d '{"model": "hybrid", "messages": [{"role": "user", "content": "What is 2+3?"}]}' -i"""
    )


@app.command()
def chat(
    question: Annotated[str | None, typer.Argument(help="the question; omit for an interactive session")] = None,
    router_dir: Annotated[
        Path | None, typer.Option("--router", help="router artifact (default: $HYBRIDLLM_ROUTER or the shipped one)")
    ] = None,
    small: Annotated[str | None, typer.Option(help="small model: local name, .gguf path or MODEL@BASE_URL")] = None,
    large: Annotated[str | None, typer.Option(help="large model: local name, .gguf path or MODEL@BASE_URL")] = None,
    max_quality_drop: Annotated[float | None, typer.Option(help="max quality drop, percent")] = None,
    cost_advantage: Annotated[float | None, typer.Option(help="share of small-model queries, percent")] = None,
    threshold: Annotated[float | None, typer.Option(help="raw score threshold in 0..1")] = None,
    max_tokens: Annotated[int, typer.Option(help="most tokens in the answer")] = 512,
    temperature: Annotated[float, typer.Option(help="sampling temperature (0: greedy)")] = 0.7,
    api_key_env: Annotated[
        list[str] | None,
        typer.Option(help="small=VAR / large=VAR: that model's API key is in $VAR (bare VAR: the one HTTP model)"),
    ] = None,
) -> None:
    """Ask through the router: shows which model answered, its score and the threshold."""
    import asyncio

    from hybridllm.backends import SamplingParams, make_backend
    from hybridllm.serve import ServeConfig
    from hybridllm.tables.specs import key_envs, parse_spec

    router = _load_router(router_dir)
    # the same rule as serve: named local models run in-process, anything else must be given
    small, large = ServeConfig(small=small, large=large).upstream_specs(router)
    specs = {"small": small, "large": large}
    http = [k for k, v in specs.items() if parse_spec(v).is_http]
    envs = key_envs(api_key_env or None, http, {router.small: "small", router.large: "large"})
    backends = {k: make_backend(v, api_key_env=envs.get(k)) for k, v in specs.items()}
    params = SamplingParams(temperature=temperature, max_tokens=max_tokens)

    async def answer(q: str) -> None:
        d = router.route(q, max_quality_drop=max_quality_drop, cost_advantage=cost_advantage, threshold=threshold)
        which = "small" if d.use_small else "large"
        err.print(
            f"[bold]{d.model}[/bold] answers (score {d.score:.3f} vs threshold {d.threshold:.3f}, {d.knob})",
            highlight=False,
        )
        async with backends[which] as b:
            s = await b.generate(q, params, on_text=lambda piece: print(piece, end="", flush=True))
        print(flush=True)
        tokens = f"{s.completion_tokens} tokens in " if s.completion_tokens else ""
        err.print(f"[dim]{tokens}{s.latency_s:.1f} s[/dim]", highlight=False)

    if question is not None:
        asyncio.run(answer(question))
        return
    err.print("interactive: one question per line, empty line or Ctrl-D to quit")
    while True:
        try:
            q = input("> ").strip()
        except EOFError:
            break
        if not q:
            break
        asyncio.run(answer(q))
