"""The shell commands README.md and docs/*.md give in their ``bash``, ``sh``, ``shell`` and ``console`` code blocks,
as written, for the tests that run them or check their form."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from tests.receiver.server import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A fence may be indented (inside a list item); it closes at the same indentation.
_BLOCK = re.compile(r"^( *)```(bash|sh|shell|console)[ \t]*\n(.*?)^\1```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class ShellCommand:
    document: str  # "README.md", "docs/querying.md"
    line: int  # where the command starts in the document
    text: str  # as written, continuation lines included, without its trailing comments

    @property
    def key(self) -> str:
        """The command with each run of whitespace as one space: how the coverage table names it."""
        return " ".join(self.text.split())


def without_comments(text: str) -> str:
    """``text`` without its shell comments: from a ``#`` that starts a word outside quotes to the end of its line."""
    kept: list[str] = []
    quote = ""
    escaped = False
    skipping = False
    for index, char in enumerate(text):
        if skipping:
            skipping = char != "\n"
            if skipping:
                continue
        elif escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or text[index - 1].isspace()):
            skipping = True
            continue
        kept.append(char)
    return "\n".join(line.rstrip() for line in "".join(kept).splitlines())


def _complete(text: str) -> bool:
    """Whether ``text`` is a whole command as bash reads it: no quote, loop or group left open, no trailing
    backslash."""
    if text.endswith("\\"):
        return False
    return subprocess.run(["bash", "-n", "-c", text], capture_output=True, timeout=30).returncode == 0


def commands_in(block: str, console: bool, document: str, first_line: int) -> list[ShellCommand]:
    """The commands of one code block (a ``console`` block's are the lines after a ``$ `` prompt)."""
    found: list[ShellCommand] = []
    pending: list[str] = []
    start = 0
    for number, line in enumerate(block.splitlines(), first_line):
        if not pending:
            if console and not line.startswith("$ "):
                continue  # output shown in a console block
            line = line.removeprefix("$ ") if console else line
            if not without_comments(line).strip():
                continue  # a blank or comment line
            start = number
        pending.append(line)
        text = without_comments("\n".join(pending)).strip()
        if _complete(text):
            found.append(ShellCommand(document, start, text))
            pending = []
    assert not pending, f"{document}:{start}: a command is never closed: {pending}"
    return found


def documented_commands() -> list[ShellCommand]:
    """Every command of every shell code block of the documents, in document order."""
    found: list[ShellCommand] = []
    for path in DOCUMENTS:
        text = path.read_text()
        for block in _BLOCK.finditer(text):
            indent, language, body = block.group(1), block.group(2), block.group(3)
            lines = [line.removeprefix(indent) for line in body.splitlines()]
            first_line = text.count("\n", 0, block.start(3)) + 1
            name = str(path.relative_to(ROOT))
            found.extend(commands_in("\n".join(lines), language == "console", name, first_line))
    return found


def documented(key: str) -> ShellCommand:
    """The one documented command whose key is ``key``: a test runs the docs' text, not a copy of it."""
    [command] = [command for command in documented_commands() if command.key == key]
    return command
