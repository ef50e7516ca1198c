"""Every statement and script the BigQuery warehouse sends passes Google's GoogleSQL (ZetaSQL) analyzer.

The second oracle beside bqemulator (which runs BigQuery SQL on DuckDB and accepts some SQL BigQuery refuses).
``capture.exercise`` runs every operation of a ``BigQueryWarehouse`` against bqemulator and records each query
job as sent (text and query parameters, with their real types); each one is then analyzed by ZetaSQL's own
analyzer with BigQuery's product mode and the BigQuery features listed in ``analyzer.LANGUAGE_FEATURES`` (not
ZetaSQL's maximum, which allows what BigQuery does not). The catalog is ``schema.py``'s tables under the
``project.dataset.table`` names the warehouse uses (its dataset and its rebuild's shadow dataset), plus the tables
it creates through the API (staging tables, relayout copies) with the schemas it gives them.

Scripts: split by ZetaSQL's parser; ``DECLARE`` and ``SET`` are parsed, their values analyzed against the declared
type, and their variables become catalog constants; ``CREATE TEMP TABLE ... AS`` is analyzed and its resolved
columns become a catalog table for the rest of the script; control flow (``IF``, loops) would be refused (the
warehouse sends none). See ``analyzer.py``'s docstring. Run these alone with ``uv run pytest -m googlesql``.
"""

from __future__ import annotations

import pytest
from google.cloud import bigquery

from pull_events_dagster.warehouse import base
from tests.googlesql.analyzer import AnalysisError, Analyzer, ScriptNotAnalyzed
from tests.googlesql.capture import Captured, every_section

PULLS = base.PULLS

pytestmark = pytest.mark.googlesql  # run alone: uv run pytest -m googlesql


def test_every_statement_and_script_the_bigquery_warehouse_sends_passes_the_analyzer(
    captured: Captured, analyzer: Analyzer
) -> None:
    refused: list[str] = []
    kinds: set[str] = set()
    for job in captured.unique_jobs():
        try:
            kinds |= {statement.kind for statement in analyzer.analyze_script(job.text, job.parameters)}
        except AnalysisError as exc:
            refused.append(str(exc))
    assert refused == []
    # What was analyzed covers every kind of statement the warehouse sends, the script statements included.
    assert kinds == {
        "resolved_query_stmt_node",
        "resolved_insert_stmt_node",
        "resolved_delete_stmt_node",
        "resolved_update_stmt_node",
        "resolved_merge_stmt_node",
        "resolved_create_table_as_select_stmt_node",
        "resolved_alter_table_stmt_node",
        "resolved_begin_stmt_node",
        "resolved_commit_stmt_node",
        "parsed only: DECLARE (its DEFAULT analyzed against its type)",
        "parsed only: SET (its value analyzed against the variable's type)",
    }


def test_the_exercise_reaches_the_rarer_paths_whose_sql_is_built_in_python(captured: Captured) -> None:
    # Statements built in bigquery.py have no -- name: to check coverage by: the paths that build them are
    # pinned here instead (a careful reading, a quarantine, an upgraded table, a rebuild's shadow and relayout).
    created = sorted(captured.created_tables)
    assert any(name.endswith("_careful") for name in created)
    assert any(name.endswith(f"{PULLS}__relayout") for name in created)
    assert any(f"{base.SHADOW_SUFFIX}.{PULLS}" in name for name in created)
    texts = [job.text for job in captured.jobs]
    assert any(f".{base.QUARANTINED}` (landing_object, reason" in text for text in texts)
    assert any("ADD COLUMN IF NOT EXISTS `day` DATE" in text for text in texts)
    assert any(text.startswith("BEGIN TRANSACTION;\nDELETE FROM") for text in texts)  # the swap-in


def test_every_section_of_every_bigquery_sql_file_is_among_the_statements_analyzed(captured: Captured) -> None:
    # A new -- name: section (or file) the exercise does not reach fails here, rather than go unchecked.
    assert set(captured.sections) == every_section()
    texts = [job.text for job in captured.unique_jobs()]
    unsent = sorted(
        key for key, rendered in captured.sections.items() if not any(t in job for t in rendered for job in texts)
    )
    assert unsent == []


def test_query_parameters_are_declared_to_the_analyzer_with_their_real_types(analyzer: Analyzer) -> None:
    table = next(name for name in analyzer.tables if name.endswith(f".{PULLS}"))
    text = f"SELECT event_id FROM `{table}` WHERE landing_object IN UNNEST(@keys) AND loaded_at >= @since LIMIT @n"
    right = [
        bigquery.ArrayQueryParameter("keys", "STRING", ["a"]),
        bigquery.ScalarQueryParameter("since", "TIMESTAMP", None),
        bigquery.ScalarQueryParameter("n", "INT64", 3),
    ]
    assert [s.kind for s in analyzer.analyze_script(text, right)] == ["resolved_query_stmt_node"]
    with pytest.raises(AnalysisError, match="LIMIT expects an integer literal or parameter"):
        analyzer.analyze_script(text, [*right[:2], bigquery.ScalarQueryParameter("n", "STRING", "3")])
    with pytest.raises(
        AnalysisError, match="No matching signature for operator >= for argument types: TIMESTAMP, DATE"
    ):
        analyzer.analyze_script(text, [right[0], bigquery.ScalarQueryParameter("since", "DATE", None), right[2]])
    with pytest.raises(AnalysisError, match="Query parameter 'keys' not found"):
        analyzer.analyze_script(text, right[1:])


def test_script_variables_and_temp_tables_are_typed_for_the_statements_after_them(analyzer: Analyzer) -> None:
    table = next(name for name in analyzer.tables if name.endswith(f".{PULLS}"))
    script = (
        "DECLARE v_days ARRAY<DATE> DEFAULT ARRAY<DATE>[];\n"
        "DECLARE v_n INT64 DEFAULT NULL;\n"
        f"CREATE TEMP TABLE t_1 AS SELECT day, repository FROM `{table}` WHERE day IN UNNEST(v_days);\n"
        "SET v_n = (SELECT COUNT(*) FROM t_1);\n"
        "SELECT repository FROM t_1 WHERE day IS NOT NULL{tail};\n"
    )
    assert len(analyzer.analyze_script(script.format(tail=""))) == 5
    with pytest.raises(AnalysisError, match="Unrecognized name: event_id"):
        analyzer.analyze_script(script.format(tail=" AND event_id = 'x'"))  # not a column of the temp table
    with pytest.raises(AnalysisError, match="No matching signature for operator = for argument types: INT64, DATE"):
        analyzer.analyze_script(script.format(tail=" AND v_n = day"))
    with pytest.raises(AnalysisError, match="Struct field 1 has type STRING which does not coerce to INT64"):
        analyzer.analyze_script(script.replace("(SELECT COUNT(*) FROM t_1)", "'many'").format(tail=""))
    with pytest.raises(AnalysisError, match="SET of an undeclared variable v_m"):
        analyzer.analyze_script(script.replace("SET v_n", "SET v_m").format(tail=""))


def test_script_control_flow_is_refused_rather_than_skipped(analyzer: Analyzer) -> None:
    with pytest.raises(ScriptNotAnalyzed, match="no rule for the script statement ast_if_statement_node"):
        analyzer.analyze_script("IF TRUE THEN SELECT 1; END IF;")


def test_the_language_is_bigquerys_not_zetasqls_maximum(analyzer: Analyzer) -> None:
    # Features BigQuery lacks stay off: comparing arrays, and a statement kind it has not (CREATE MODULE is not
    # even asked for); the reserved keywords are GoogleSQL's (a CTE named current is a syntax error in BigQuery).
    with pytest.raises(AnalysisError, match="Equality is not defined for arguments of type ARRAY<INT64>"):
        analyzer.analyze_script("SELECT [1] = [1]")
    with pytest.raises(AnalysisError, match="Syntax error"):
        analyzer.analyze_script("WITH current AS (SELECT 1 AS x) SELECT x FROM current")
    assert [s.kind for s in analyzer.analyze_script("SELECT JSON_KEYS(PARSE_JSON('{}'), 1)")] == [
        "resolved_query_stmt_node"
    ]
