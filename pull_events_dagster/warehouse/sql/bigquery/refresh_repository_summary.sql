-- Recompute the summary rows of the marked repositories (and, when the clock's day has turned, of every
-- repository with daily rows in v_window_first..v_window_last, whose time windows moved) from daily_pulls and
-- the running totals of repository_values. Never reads the pull table. DuckDB:
-- ../duckdb/refresh_repository_summary.sql, statement for statement. bigquery.py runs the file as one script,
-- every statement but the last in one transaction, and declares the clock: v_at (computed_at), v_today its UTC
-- day, v_horizon_day the day of v_at plus the future tolerance (pulls dated later count in no time-based
-- figure), v_day_turned and the window's days (base.summary_window). The same figures from the pull table:
-- summary_audit.sql. Temporary tables carry {{run}}: bqemulator keeps a script's temporary tables after it ends.

-- name: targets
CREATE TEMP TABLE pe_summary_targets_{{run}} AS
SELECT repository FROM {{pending}}
UNION DISTINCT
SELECT repository FROM {{daily}} WHERE v_day_turned AND day BETWEEN v_window_first AND v_window_last;

-- name: delete_targets
DELETE FROM {{summary}} WHERE repository IN (SELECT repository FROM pe_summary_targets_{{run}});

-- name: insert_targets
INSERT INTO {{summary}} (repository, events, image_pulls, errors, error_rate, unique_actors, unique_clients,
  first_seen, last_seen, image_pulls_last_7d, image_pulls_last_30d, top_tags, computed_at)
WITH figures AS (
  SELECT repository,
    SUM(events) AS events,
    SUM(image_pulls) AS image_pulls,
    SUM(errors) AS errors,
    MIN(IF(day <= v_horizon_day, first_pull, NULL)) AS first_seen,
    MAX(IF(day <= v_horizon_day, last_pull, NULL)) AS last_seen,
    IFNULL(SUM(IF(day BETWEEN DATE_SUB(v_today, INTERVAL 6 DAY) AND v_horizon_day, image_pulls, NULL)), 0) AS last_7d,
    IFNULL(SUM(IF(day BETWEEN DATE_SUB(v_today, INTERVAL 29 DAY) AND v_horizon_day, image_pulls, NULL)), 0) AS last_30d
  FROM {{daily}}
  WHERE repository IN (SELECT repository FROM pe_summary_targets_{{run}})
  GROUP BY repository
), members AS (
  SELECT repository,
    COUNTIF(kind = 'actor') AS unique_actors,
    COUNTIF(kind = 'client') AS unique_clients
  FROM {{repository_values}}
  WHERE repository IN (SELECT repository FROM pe_summary_targets_{{run}}) AND days > 0
  GROUP BY repository
), tags AS (
  -- DuckDB takes the tags in the members query (list ... FILTER); BigQuery's ARRAY_AGG has no FILTER.
  SELECT repository,
    ARRAY_AGG(STRUCT(value AS tag, image_pulls AS image_pulls) ORDER BY image_pulls DESC, value LIMIT 5) AS top_tags
  FROM {{repository_values}}
  WHERE repository IN (SELECT repository FROM pe_summary_targets_{{run}}) AND days > 0 AND kind = 'tag'
  GROUP BY repository
)
SELECT f.repository, f.events, f.image_pulls, f.errors, f.errors / f.events,
  IFNULL(m.unique_actors, 0), IFNULL(m.unique_clients, 0), f.first_seen, f.last_seen, f.last_7d, f.last_30d,
  IFNULL(t.top_tags, []), v_at
FROM figures f LEFT JOIN members m USING (repository) LEFT JOIN tags t USING (repository);

-- name: clear_pending
DELETE FROM {{pending}} WHERE TRUE;

-- name: recomputed
-- After the commit; DuckDB reads the table's count in a statement of its own.
SELECT (SELECT COUNT(*) FROM pe_summary_targets_{{run}}) AS recomputed, (SELECT COUNT(*) FROM {{summary}}) AS table_rows;
