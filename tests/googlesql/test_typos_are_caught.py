"""A deliberate typo in any section of the BigQuery SQL files fails the analysis (``mutants.py`` makes them).

Each ``-- name:`` section is mutated where it sits in the script the warehouse sent (so its variables, parameters
and temp tables are there) with each kind of typo, and the analyzer must refuse the mutant with a message naming
the problem. A section with no place for a kind of typo (``DELETE ... WHERE TRUE`` has no function, column nor
value) is skipped for that kind; every file must still have each kind of typo caught in some section.
"""

from __future__ import annotations

import re

import pytest

from tests.googlesql.analyzer import AnalysisError, Analyzer
from tests.googlesql.capture import Captured
from tests.googlesql.mutants import KINDS, mistyped_parameters, mutate

pytestmark = pytest.mark.googlesql  # run alone: uv run pytest -m googlesql


@pytest.mark.parametrize("kind", KINDS)
def test_a_typo_in_any_section_of_the_bigquery_sql_is_refused_naming_the_problem(
    kind: str, captured: Captured, analyzer: Analyzer
) -> None:
    jobs = captured.unique_jobs()
    missed: list[str] = []
    caught_in: set[str] = set()
    for (file, name), rendered in sorted(captured.sections.items()):
        section = min(rendered)
        job = next(job for job in jobs if section in job.text)
        mutant = mutate(section, kind)
        text, parameters = job.text, job.parameters
        if mutant is not None:
            text, expected = job.text.replace(section, mutant.text), mutant.expected()
            label = f"{file}.{name}: {mutant.original} -> {mutant.replacement}"
        elif kind == "type" and (mistyped := mistyped_parameters(job.parameters, section)) is not None:
            parameters, parameter = mistyped
            expected = re.compile("LIMIT expects an integer literal or parameter")
            label = f"{file}.{name}: @{parameter} declared a STRING"
        else:
            continue
        try:
            analyzer.analyze_script(text, parameters)
            missed.append(f"{label}: accepted")
        except AnalysisError as exc:
            message = str(exc).splitlines()[0]
            if expected.search(message):
                caught_in.add(file)
            else:
                missed.append(f"{label}: refused for another reason: {message}")
    assert missed == []
    assert caught_in == {file for file, _ in captured.sections}
