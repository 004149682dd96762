"""The `klear` command: every subcommand, one-line errors.

`fit`, `validate`, `test` and `predict` are the LightningCLI of `lightning_cli`; the project commands
are typed functions exposed through jsonargparse, so `klear <command> --help` lists their arguments.
A bad argument or config value, or a missing / damaged / foreign checkpoint, prints one line
`error: <field>: <what is wrong>` and exits with status 2; `--debug` (anywhere on the command line)
or the environment variable KLEAR_DEBUG=1 shows the traceback instead.
`klear test --prompts DIR` scores generations from a Verse-Bench prompt folder (`versebench.py`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from argparse import ArgumentError
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from jsonargparse import ArgumentParser

from klear_lightning.errors import ConfigError

LIGHTNING_COMMANDS = {
    "fit": "train from a config (resume with --ckpt_path)",
    "validate": "validation loss and metrics of a checkpoint",
    "test": "score a checkpoint on the test split and write the Verse-Bench report",
    "predict": "generate model.predict_task for the predict split",
}


def _summary() -> Callable[..., Any]:
    from klear_lightning.summary import summary

    return summary


def _syncworld() -> Callable[..., Any]:
    from klear_lightning.data.syncworld import generate_syncworld

    return generate_syncworld


def _prepare() -> Callable[..., Any]:
    from klear_lightning.data.prepare import prepare

    return prepare


def _curate() -> Callable[..., Any]:
    from klear_lightning.curate.job import curate

    return curate


def _cache() -> Callable[..., Any]:
    from klear_lightning.data.cache import cache_latents

    return cache_latents


def _generate() -> Callable[..., Any]:
    from klear_lightning.generate import generate

    return generate


def _sweep() -> Callable[..., Any]:
    from klear_lightning.sweep import sweep

    return sweep


def _compare() -> Callable[..., Any]:
    from klear_lightning.compare import compare

    return compare


def _versebench() -> Callable[..., Any]:
    from klear_lightning.versebench import run_prompts

    return run_prompts


# name -> (one line for `klear --help`, the function it runs; imported on use)
PROJECT_COMMANDS: dict[str, tuple[str, Callable[[], Callable[..., Any]]]] = {
    "summary": ("parameters, tokens per stream and training FLOPs of a config (meta device)", _summary),
    "syncworld": ("write the SyncWorld dataset as shards", _syncworld),
    "prepare": ("turn your videos into shards", _prepare),
    "curate": ("filter, scene-split, route and transcribe raw videos (Ray Data) for `klear prepare`", _curate),
    "cache": ("add cached latents and caption embeddings to existing shards", _cache),
    "generate": ("prompts (+ a first frame or a clip) to mp4 with audio, wav and spectrogram", _generate),
    "compare": ("arms over seeds: means with intervals, paired differences, claims (MLflow)", _compare),
    "sweep": ("run arms x seeds as one MLflow experiment, resumable", _sweep),
    "test --prompts": ("generate from a Verse-Bench prompt folder and score it (Table 1 report)", _versebench),
}


def usage() -> str:
    """What `klear --help` prints: every command with one line."""
    lines = ["usage: klear [--debug] <command> [options]   (klear <command> --help for its options)", "", "commands:"]
    table = {**LIGHTNING_COMMANDS, **{name: line for name, (line, _) in PROJECT_COMMANDS.items()}}
    lines += [f"  {name:<10} {line}" for name, line in table.items()]
    lines += ["", "--debug or KLEAR_DEBUG=1: show the traceback of an error instead of one line"]
    return "\n".join(lines)


def command_parser(name: str) -> ArgumentParser:
    """The parser of project command `name`: its function's typed parameters (a plain parser:
    `--config` is a parameter here, not jsonargparse's config-file option)."""
    fn = PROJECT_COMMANDS[name][1]()
    parser = ArgumentParser(prog=f"klear {name}", description=(fn.__doc__ or "").split("\n")[0], exit_on_error=False)
    parser.add_function_arguments(fn, as_positional=False)
    return parser


def run_function(name: str, args: list[str]) -> Any:
    """Parse `args` for project command `name` and call its function."""
    parser = command_parser(name)
    init = parser.instantiate_classes(parser.parse_args(args))
    return PROJECT_COMMANDS[name][1]()(**{k: v for k, v in vars(init).items() if not k.startswith("__")})


def error_line(err: BaseException) -> str:
    """One line `<field>: <what is wrong>` for a ConfigError or a jsonargparse parse error."""
    text = str(err).strip()
    if isinstance(err, ConfigError):
        return text.splitlines()[0]
    unknown = re.match(r"unrecognized arguments: (\S+)", text)
    if unknown:
        return f"{unknown[1]}: unrecognized argument (see --help)"
    required = re.match(r"the following arguments are required: (.+)", text)
    if required:
        return f"{required[1]}: required (see --help)"
    keys = re.findall(r'Parser key "([^"]+)"', text)
    lines = [ln.strip().lstrip("- ") for ln in text.splitlines() if ln.strip()]
    skip = (
        "Given value",
        "Expected a <class 'NoneType'>",
        "Parser key",
        "Subtypes",
        "Errors",
        "Does not validate",
        "Problem with given class_path",
    )
    detail = next((ln for ln in reversed(lines) if not ln.startswith(skip)), lines[-1])
    detail = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", re.sub(r'^Parser key "[^"]+":\s*', "", detail))
    expected = re.match(r"Expected a (.+?)\. Got value: (.*)$", detail)
    if expected:
        kind = re.sub(r"^typing\.Literal\[(.*)\]$", r"one of \1", expected[1])
        detail = f"expected {kind}, got {expected[2]!r}"
    if not keys:
        return f"arguments: {detail}"
    field = keys[0] + (".init_args" if "Problem with given class_path" in text else "")
    return f"{field}.{keys[-1]}: {detail}" if len(keys) > 1 else f"{field}: {detail}"


def run(args: list[str]) -> None:
    """Dispatch `args` (without the program name) to its command."""
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return
    name = args[0]
    if name == "test" and any(a == "--prompts" or a.startswith("--prompts=") for a in args[1:]):
        name, args = "test --prompts", [name, *args[1:]]
    if name in PROJECT_COMMANDS:
        result = run_function(name, args[1:])
        if name == "cache":
            print(json.dumps(asdict(result), indent=1))
        if name == "sweep" and result.failed:
            sys.exit(1)
        return
    if name not in LIGHTNING_COMMANDS and not name.startswith("-"):
        raise ConfigError(f"command: unknown command {name!r}; run `klear --help` for the list")
    from klear_lightning.lightning_cli import cli_main  # imports Lightning: only for its commands

    cli_main(args if args != sys.argv[1:] else None)  # None: LightningCLI reads sys.argv itself


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("KLEAR_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    try:
        run(args)
    except (ConfigError, ArgumentError) as err:
        if debug:
            raise
        print(f"error: {error_line(err)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
