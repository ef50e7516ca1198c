-- Recompute some days of daily_pulls and of the repository summary's state (daily_repository_values, and the
-- running totals in repository_values), delete-then-insert. DuckDB: ../duckdb/refresh_daily_pulls.sql, statement
-- for statement. bigquery.py runs the file as one script: it declares v_days (the days, ARRAY<DATE>) and their
-- span v_first_day..v_last_day, and wraps every statement but the last in one transaction. Reads only the pull
-- table's partitions of those days (day is its partitioning column: the span prunes for certain, the list
-- narrows it to the days), and the same partitions of daily_pulls and daily_repository_values.
-- Temporary tables carry {{run}}: bqemulator keeps a script's temporary tables after the script ends.

-- name: day_pulls
CREATE TEMP TABLE pe_day_pulls_{{run}} AS
SELECT day, repository, body.`when` AS pulled, actor.subject AS actor, body.remote_address AS client,
  body.tag AS tag,
  body.method = 'GET' AND body.type = 'manifest' AND body.error IS NULL AS image_pull,
  body.method = 'HEAD' AND body.type = 'manifest' AS manifest_head,
  body.method = 'GET' AND body.type = 'blob' AS blob_get,
  body.error IS NOT NULL AS failed
FROM {{pulls}}
WHERE day BETWEEN v_first_day AND v_last_day AND day IN UNNEST(v_days);

-- name: new_daily
CREATE TEMP TABLE pe_new_daily_{{run}} AS
SELECT day, repository,
  COUNT(*) AS events,
  COUNTIF(image_pull) AS image_pulls,
  COUNTIF(manifest_head) AS manifest_heads,
  COUNTIF(blob_get) AS blob_gets,
  COUNTIF(failed) AS errors,
  COUNT(DISTINCT actor) AS unique_actors,
  COUNT(DISTINCT client) AS unique_clients,
  MIN(pulled) AS first_pull,
  MAX(pulled) AS last_pull
FROM pe_day_pulls_{{run}}
GROUP BY day, repository;

-- name: new_values
-- Each day's distinct actors and clients of a repository, and its tags with their image pulls.
CREATE TEMP TABLE pe_new_values_{{run}} AS
SELECT DISTINCT day, repository, 'actor' AS kind, actor AS value, CAST(NULL AS INT64) AS image_pulls
FROM pe_day_pulls_{{run}} WHERE actor IS NOT NULL
UNION ALL
SELECT DISTINCT day, repository, 'client', client, NULL FROM pe_day_pulls_{{run}} WHERE client IS NOT NULL
UNION ALL
SELECT day, repository, 'tag', tag, COUNT(*) FROM pe_day_pulls_{{run}} WHERE image_pull AND tag IS NOT NULL
GROUP BY day, repository, tag;

-- name: value_delta
-- What the running totals gain and lose: the days' new values minus what the same days held before. Filtered
-- outside the aggregation: in BigQuery a HAVING's image_pulls would name the SELECT list's alias (a SUM of a SUM).
CREATE TEMP TABLE pe_value_delta_{{run}} AS
SELECT * FROM (
  SELECT repository, kind, value, SUM(sign) AS days, SUM(sign * IFNULL(image_pulls, 0)) AS image_pulls
  FROM (
    SELECT repository, kind, value, image_pulls, 1 AS sign FROM pe_new_values_{{run}}
    UNION ALL
    SELECT repository, kind, value, image_pulls, -1 AS sign FROM {{daily_values}}
    WHERE day BETWEEN v_first_day AND v_last_day AND day IN UNNEST(v_days)
  )
  GROUP BY repository, kind, value
)
WHERE days != 0 OR image_pulls != 0;

-- name: mark_changed
-- The repositories whose figures changed, for the summary to recompute: a daily row that differs, or a value
-- gained or lost. (day, repository) is unique on both sides, so EXCEPT DISTINCT (BigQuery has no EXCEPT ALL)
-- finds the same rows as DuckDB's EXCEPT ALL.
INSERT INTO {{pending}} (repository, marked_at)
SELECT DISTINCT repository, CURRENT_TIMESTAMP() FROM (
  SELECT repository FROM (
    SELECT * EXCEPT (computed_at) FROM {{daily}}
    WHERE day BETWEEN v_first_day AND v_last_day AND day IN UNNEST(v_days)
    EXCEPT DISTINCT
    SELECT * FROM pe_new_daily_{{run}}
  )
  UNION ALL
  SELECT repository FROM (
    SELECT * FROM pe_new_daily_{{run}}
    EXCEPT DISTINCT
    SELECT * EXCEPT (computed_at) FROM {{daily}}
    WHERE day BETWEEN v_first_day AND v_last_day AND day IN UNNEST(v_days)
  )
  UNION ALL
  SELECT repository FROM pe_value_delta_{{run}}
);

-- name: apply_delta
MERGE {{repository_values}} AS r
USING pe_value_delta_{{run}} AS d
ON r.repository = d.repository AND r.kind = d.kind AND r.value = d.value
WHEN MATCHED AND r.days + d.days <= 0 THEN DELETE
WHEN MATCHED THEN UPDATE SET
  days = r.days + d.days,
  image_pulls = CASE WHEN d.kind = 'tag' THEN IFNULL(r.image_pulls, 0) + d.image_pulls END
WHEN NOT MATCHED THEN INSERT (repository, kind, value, days, image_pulls)
  VALUES (d.repository, d.kind, d.value, d.days, CASE WHEN d.kind = 'tag' THEN d.image_pulls END);

-- name: delete_daily
DELETE FROM {{daily}} WHERE day BETWEEN v_first_day AND v_last_day AND day IN UNNEST(v_days);

-- name: insert_daily
INSERT INTO {{daily}} (day, repository, events, image_pulls, manifest_heads, blob_gets, errors, unique_actors,
  unique_clients, first_pull, last_pull, computed_at)
SELECT *, CURRENT_TIMESTAMP() FROM pe_new_daily_{{run}};

-- name: delete_values
DELETE FROM {{daily_values}} WHERE day BETWEEN v_first_day AND v_last_day AND day IN UNNEST(v_days);

-- name: insert_values
INSERT INTO {{daily_values}} (day, repository, kind, value, image_pulls) SELECT * FROM pe_new_values_{{run}};

-- name: rows_per_day
-- After the commit; DuckDB reads the pending and table counts in statements of their own.
SELECT ARRAY(SELECT AS STRUCT day, COUNT(*) AS n FROM pe_new_daily_{{run}} GROUP BY day ORDER BY day) AS rows_per_day,
  (SELECT COUNT(DISTINCT repository) FROM {{pending}}) AS marked,
  (SELECT COUNT(*) FROM {{daily}}) AS table_rows;
