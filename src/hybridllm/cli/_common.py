"""What every command shares: the Typer app, the consoles, option types and one-line failures."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from hybridllm.errors import HybridLLMError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # markdown: a docstring's lines are joined into paragraphs, so help never breaks mid-sentence
    rich_markup_mode="markdown",
    help="Route each LLM query to the cheapest model that will answer it well enough: two models or any number.",
)


def _version(value: bool) -> None:
    if value:
        from hybridllm._version import __version__

        print(f"hybridllm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        # metavar "": a flag takes no value, so --help shows no `<bool>` after it
        typer.Option("--version", callback=_version, is_eager=True, metavar="", help="print the version and exit"),
    ] = False,
) -> None:
    """Route each LLM query to the cheapest model that will answer it well enough: two models or any
    number. Commands in pipeline order: collect, score, stats, split, train, evaluate, crossval,
    calibrate, route, serve, chat."""


out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class Labels(str, Enum):
    det = "det"
    prob = "prob"
    trans = "trans"


class Select(str, Enum):
    loss = "loss"
    apgr = "apgr"


class Mode(str, Enum):
    head = "head"
    finetune = "finetune"


class CLIError(HybridLLMError):
    """A user-facing failure with a one-line reason."""


class Interrupted(CLIError):
    """Ctrl-C stopped a command; the message says where (what is kept, how to go on). Exit code 130."""


def _fail(msg: str) -> NoReturn:
    raise CLIError(msg)


def _progress(msg: str) -> None:
    err.print(f"[dim]·[/dim] {msg}", highlight=False, soft_wrap=True)  # commands in it stay copyable


class Endpoint(str, Enum):
    chat = "chat"
    completion = "completion"


class Metric(str, Enum):
    """The metrics of :mod:`hybridllm.score` (a test keeps the two lists equal)."""

    exact_match = "exact-match"
    choice = "choice"
    rouge_l = "rouge-l"
    embedding_similarity = "embedding-similarity"
    bartscore = "bartscore"
    reward_model = "reward-model"
    judge = "judge"


class Engine(str, Enum):
    local = "local"
    ray = "ray"


# the engine options every pipeline stage takes (collect, score, train, evaluate)
EngineOpt = Annotated[
    Engine, typer.Option(help="local: in this process; ray: Ray Data over a cluster", rich_help_panel="Engine")
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster to join (auto, HOST:6379, ray://HOST:10001); default: start a local one",
        rich_help_panel="Engine",
    ),
]
WorkersOpt = Annotated[int, typer.Option(help="Ray: actors / concurrent tasks per stage", rich_help_panel="Engine")]
ShardRowsOpt = Annotated[
    int, typer.Option(help="Ray: rows per shard (unit of work and of resume)", rich_help_panel="Engine")
]
WorkDirOpt = Annotated[
    Path | None,
    typer.Option(
        help="Ray: shard directory (shared storage on a cluster); default beside the output or in the cache",
        rich_help_panel="Engine",
    ),
]


def _ray_options(engine: Engine, address: str | None, workers: int, shard_rows: int, work_dir: Path | None) -> Any:
    if engine is Engine.local:
        if address is not None or work_dir is not None:
            _fail("--ray-address / --work-dir need --engine ray")
        return None
    from hybridllm.engine.jobs import RayOptions

    if workers < 1 or shard_rows < 1:
        _fail("--workers and --shard-rows must be >= 1")
    return RayOptions(address=address, workers=workers, shard_rows=shard_rows, work_dir=work_dir)


def _load_router(router_dir: Path | None) -> Any:
    from hybridllm.model.router import Router, default_router_dir

    if router_dir is None:
        try:
            router_dir = default_router_dir()
        except FileNotFoundError as exc:
            _fail(str(exc))
    return Router(router_dir)


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"
