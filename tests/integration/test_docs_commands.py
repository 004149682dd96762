"""Every `klear ...` command shown in README.md and docs/*.md parses with the code as it is."""

from __future__ import annotations

import re
import shlex

import pytest

from klear_lightning.cli import LIGHTNING_COMMANDS, PROJECT_COMMANDS, command_parser, main
from tests.helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMANDS = (*LIGHTNING_COMMANDS, *PROJECT_COMMANDS)
INVOCATION = re.compile(r"(?:^|[\s/])(?:klear|-m klear_lightning\.cli) ((?:" + "|".join(COMMANDS) + r")\b.*)$")


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `klear`) of every command in a code block or in inline code with options."""
    found = []
    for path in DOCS:
        text = path.read_text()
        lines = [
            line
            for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
            for line in block.replace("\\\n", " ").splitlines()
        ]
        lines += re.findall(r"`([^`\n]*klear [^`\n]* --[^`\n]*)`", text)
        for line in lines:
            match = INVOCATION.search(line.split(" # ")[0].strip())
            if match:
                found.append((f"{path.name}: {match[1]}", shlex.split(match[1])))
    return found


COMMAND_LINES = documented_commands()


def test_the_docs_show_commands():
    shown = {argv[0] for _, argv in COMMAND_LINES}
    assert {"fit", "test", "summary", "syncworld", "prepare", "cache", "generate", "compare"} <= shown
    assert not [where for where, argv in COMMAND_LINES if "..." in argv], "write documented commands in full"


@pytest.mark.parametrize("argv", [argv for _, argv in COMMAND_LINES], ids=[where for where, _ in COMMAND_LINES])
def test_documented_command_parses(argv, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    name, args = argv[0], argv[1:]
    if "--help" in args:
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code in (0, None)
        return
    if name in PROJECT_COMMANDS:
        command_parser(name).parse_args(args)
        return
    with pytest.raises(SystemExit) as done:
        main([name, *args, "--print_config"])
    assert done.value.code in (0, None), capsys.readouterr().err[-2000:]
    assert "model:" in capsys.readouterr().out


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code in (0, None)
    assert f"klear {name}" in capsys.readouterr().out or name in LIGHTNING_COMMANDS
