"""Commands that answer questions: serve, chat."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from hybridllm.serve.settings import ServeSettings

from ._common import _fail, _load_router, _progress, app, err
from ._settings import given, with_settings


def serve(**kw: Any) -> None:
    """Serve an OpenAI-compatible endpoint that routes each request to the model the router picks
    (small or large, or any of N models). Every option but --config and --verbose is also a key of
    the --config file, its name in underscores (--state-lease: state_lease_s); a flag given wins
    over the file."""
    from hybridllm.serve.build import build, load_router
    from hybridllm.serve.config import ServeConfig
    from hybridllm.serve.runner import bind, run

    cfg = ServeConfig.load(kw["config"], **given(ServeSettings, kw))
    cfg.options()  # refuses an open non-loopback bind, a cap naming no key, ... before anything loads
    with bind(cfg.host, cfg.port) as sock:  # a port in use fails now, not after the models load
        try:
            router = load_router(cfg)
        except FileNotFoundError as exc:
            _fail(str(exc))
        if cfg.workers > 1:  # each worker builds its own app; this process only binds and supervises
            app_, ups = None, cfg.upstreams(router, load=False)
        else:
            built = build(cfg, _progress, router=router)
            app_, ups = built.app, built.upstreams
        run(app_, cfg, on_bound=lambda bound: _banner(cfg, router, ups, bound), verbose=kw["verbose"], sock=sock)


# every setting of serve/settings.py is an option, between --config and --verbose
_CONFIG = Annotated[Path | None, typer.Option(help="TOML file with any of the settings below (see docs/serve.md)")]
# metavar "": a flag takes no value, so --help shows no `<bool>` after it
_VERBOSE = Annotated[bool, typer.Option(metavar="", help="also log the HTTP client's per-request lines")]
_KW = inspect.Parameter.KEYWORD_ONLY
app.command()(
    with_settings(
        ServeSettings,
        before=[inspect.Parameter("config", _KW, default=None, annotation=_CONFIG)],
        after=[inspect.Parameter("verbose", _KW, default=False, annotation=_VERBOSE)],
    )(serve)
)


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
