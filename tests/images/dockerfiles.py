"""Reading Dockerfiles and .dockerignore without Docker: instructions per stage, and what the build context holds."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    """One ``FROM`` stage: its instructions as (keyword, arguments), in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arguments for kw, arguments in self.instructions if kw == keyword]

    def index(self, keyword: str) -> int:
        """Position of the last ``keyword`` instruction (-1 if none)."""
        found = [n for n, (kw, _) in enumerate(self.instructions) if kw == keyword]
        return found[-1] if found else -1


def stages(dockerfile: Path) -> list[Stage]:
    """The stages of ``dockerfile``, continuation lines joined and comments dropped."""
    lines = [line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    result: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        keyword, _, arguments = line.strip().partition(" ")
        keyword, arguments = keyword.upper(), " ".join(arguments.split())
        if keyword == "FROM":
            base, _, name = arguments.partition(" AS ")
            result.append(Stage(base, name or None))
        else:
            result[-1].instructions.append((keyword, arguments))
    return result


def exec_form(arguments: str) -> list[str] | None:
    """The argv of an exec-form ``CMD``/``ENTRYPOINT`` (a JSON array of strings), else None (shell form)."""
    try:
        argv = json.loads(arguments)
    except json.JSONDecodeError:
        return None
    return argv if isinstance(argv, list) and all(isinstance(arg, str) for arg in argv) else None


def copy_arguments(arguments: str) -> tuple[dict[str, str], list[str], str]:
    """A ``COPY``'s flags (``--from=build`` -> {"from": "build"}), sources and destination."""
    words = shlex.split(arguments)
    flags = dict(word[2:].split("=", 1) for word in words if word.startswith("--"))
    *sources, destination = [word for word in words if not word.startswith("--")]
    return flags, sources, destination


def env_values(stage: Stage) -> dict[str, str]:
    """The ``ENV name=value`` settings of a stage (later ones win)."""
    values: dict[str, str] = {}
    for arguments in stage.all("ENV"):
        for word in shlex.split(arguments):
            name, _, value = word.partition("=")
            values[name] = value
    return values


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regular expression over slash-separated context paths."""
    parts = []
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
        parts.append({"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token)))
    return re.compile("".join(parts))


def sent_to_docker(path: str, dockerignore: Path) -> bool:
    """Whether the build context holds ``path``: the last pattern that matches it or a folder above it decides,
    ``!`` patterns putting it back (Docker's .dockerignore rules)."""
    parents = path.split("/")
    candidates = ["/".join(parents[: n + 1]) for n in range(len(parents))]
    sent = True
    for line in dockerignore.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = _pattern(line.removeprefix("!"))
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            sent = negated
    return sent
