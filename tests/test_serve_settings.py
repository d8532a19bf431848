"""One settings definition (serve/settings.py): every setting is a `serve` option and a `--config`
key with the same default and help, flags given win over the file, the running proxy's options
take the settings' values and defaults, and a new field is a new option with nothing else to edit."""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import Field
from typer.main import get_command

from hybridllm.cli import app
from hybridllm.cli._settings import given, with_settings
from hybridllm.serve.config import ServeConfig, ServeConfigError
from hybridllm.serve.options import ServeOptions
from hybridllm.serve.settings import ServeSettings, flag_name

REPO = Path(__file__).resolve().parents[1]


def _serve() -> Any:
    return get_command(app).commands["serve"]  # type: ignore[attr-defined]


def _parse(*args: str) -> dict[str, Any]:
    """The values `hybridllm serve ARGS` hands its function (click's own parsing)."""
    return _serve().make_context("serve", list(args)).params


def test_every_setting_is_an_option_with_its_help_and_default():
    opts = {p.name: p for p in _serve().params}
    for name, info in ServeSettings.model_fields.items():
        p = opts[name]
        assert p.opts[0] == flag_name(name) and p.help == info.description and info.description
        assert p.default is None  # not given: the file's value or the setting's default stands
        default = info.get_default(call_default_factory=True)
        if isinstance(default, bool):
            assert p.secondary_opts == ["--no-" + flag_name(name)[2:]]
            assert p.show_default == (flag_name(name) if default else "--no-" + flag_name(name)[2:])
        elif default not in (None, []):
            assert p.show_default == str(default)
    # the options that are not settings: the file itself, and how much to log
    assert sorted(set(opts) - set(ServeSettings.model_fields)) == ["config", "verbose"]
    # the names every existing command line uses
    flags = {o for p in _serve().params for o in p.opts}
    assert {"--state-lease", "--settle-timeout", "--router", "--models-file", "--api-key-env", "--hold-window"} <= flags


def test_the_reference_page_gives_each_setting_its_default_and_key():
    page = (REPO / "docs" / "cli.md").read_text()
    serve = page.split("## `hybridllm serve`")[1].split("\n## ")[0]
    rows = {r.split(" | ")[0].strip("| `").split("` / `")[0]: r for r in serve.splitlines() if r.startswith("| `--")}
    assert rows["--fallback"].endswith("| `--fallback` | `fallback` |")  # it once said --no-fallback
    assert rows["--hold-window"].endswith("| `200` | `hold_window` |")
    assert rows["--state-lease"].endswith("| `30` | `state_lease_s` |")
    assert rows["--verbose"].endswith("| `--no-verbose` |  |")
    helptext = subprocess.run(
        [sys.executable, "-m", "hybridllm.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        check=True,
    ).stdout
    line = next(x for x in helptext.splitlines() if "--fallback" in x)
    after = helptext[helptext.index(line) :].split("\n")[1]
    assert "[default: (--fallback)]" in line + after


def test_flags_given_win_over_the_file_and_flags_not_given_leave_it(tmp_path):
    toml = tmp_path / "serve.toml"
    toml.write_text(
        'hold_window = 50\nstate_lease_s = 9\nfallback = false\nbudget_cap = ["*=5/day"]\ntimeout_s = 7.5\n'
    )
    values = _parse("--config", str(toml), "--state-lease", "12", "--max-messages", "9")
    cfg = ServeConfig.load(values["config"], **given(ServeSettings, values))
    assert (cfg.hold_window, cfg.state_lease_s, cfg.fallback, cfg.budget_cap) == (50, 12, False, ["*=5/day"])
    assert (cfg.max_messages, cfg.timeout_s, cfg.port) == (9, 7.5, 8000)
    values = _parse("--config", str(toml), "--fallback", "--budget-cap", "*=1/day", "--budget-cap", "*=9/month")
    cfg = ServeConfig.load(values["config"], **given(ServeSettings, values))
    assert cfg.fallback is True and cfg.budget_cap == ["*=1/day", "*=9/month"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "70000"], "flags: port: Input should be less than or equal to 65535"),
        (["--on-cap", "shrug"], "flags: on_cap: Input should be 'downgrade' or 'refuse'"),
        (["--hold-window", "-1"], "flags: hold_window: Input should be greater than or equal to 0"),
        (["--default-knob", "hybrid-xx-1"], "is not a routing name"),
    ],
)
def test_a_bad_flag_is_one_line_naming_the_setting(args, message):
    values = _parse(*args)
    with pytest.raises(ServeConfigError, match=re.escape(message)):
        ServeConfig.load(None, **given(ServeSettings, values))


def test_the_proxy_options_are_the_settings():
    """Each option that is a setting has its default and, from a config, its value; the ones made
    from settings are made."""
    plain = ServeOptions()
    settings = {f.name for f in dataclasses.fields(ServeOptions) if "setting" in f.metadata}
    assert "hold_window" in settings and "settle_timeout_s" in settings
    for name in settings:
        assert getattr(plain, name) == ServeSettings.model_fields[name].default, name
    cfg = ServeConfig(hold_window=7, shadow_rate=0.5, judge="j@http://127.0.0.1:9/v1", settle_timeout_s=3.0)
    opts = cfg.options(state_dir="/tmp/x")
    assert (opts.hold_window, opts.shadow_rate, opts.settle_timeout_s, opts.state_dir) == (7, 0.5, 3.0, "/tmp/x")
    assert opts.allowed_hosts == ["127.0.0.1"] and opts.default_knob is None
    assert ServeConfig(default_knob="hybrid").options().default_knob is None
    assert ServeConfig(default_knob="hybrid-qd-2").options().default_knob == "hybrid-qd-2"


def test_a_new_setting_is_one_field():
    """A field added to the settings is an option of the command built from them, parsed to its
    type, with nothing else written for it."""

    class More(ServeSettings):
        drain_s: float = Field(2.5, ge=0, description="seconds to finish open requests on exit")

    seen: dict[str, Any] = {}

    def cmd(**kw: Any) -> None:
        seen.update(given(More, kw))

    tiny = typer.Typer()
    tiny.command()(with_settings(More, before=[], after=[])(cmd))
    tiny.command("other")(lambda: None)  # two commands: the group keeps `cmd` as a subcommand
    get_command(tiny).main(["cmd", "--drain", "4", "--port", "9"], standalone_mode=False)
    assert seen == {"drain_s": 4.0, "port": 9}
    assert More.model_validate(seen).drain_s == 4.0
    assert "drain_s" in inspect.signature(cmd).parameters


def test_help_reads_the_settings_without_loading_the_server():
    """`hybridllm serve --help` makes its options from serve/settings.py alone: neither FastAPI, the
    app nor the backends load (they cost every other command their import time)."""
    code = (
        "import sys\n"
        "from hybridllm.cli import app\n"
        "try:\n"
        "    app(['serve', '--help'], standalone_mode=False)\n"
        "finally:\n"
        "    print([m for m in ('fastapi', 'hybridllm.serve.app', 'hybridllm.backends') if m in sys.modules])\n"
    )
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--hold-window" in got.stdout and got.stdout.strip().splitlines()[-1] == "[]"
