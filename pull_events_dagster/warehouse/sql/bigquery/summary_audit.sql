-- repository_pull_summary as defined, computed from the whole pull table (a full scan: the scheduled audit
-- runs it, never a load), compared row by row with the table as of v_as_of (its latest computed_at).
-- DuckDB: ../duckdb/summary_audit.sql. bigquery.py declares v_as_of, v_tolerance_s (the future tolerance, in
-- seconds) and v_examples (how many differing repositories to name).

-- name: differences
WITH clock AS (
  -- The cast gives bqemulator the type of a NULL v_as_of (an empty summary).
  SELECT DATE(v_as_of) AS today,
    DATE(TIMESTAMP_ADD(CAST(v_as_of AS TIMESTAMP), INTERVAL v_tolerance_s SECOND)) AS horizon_day
), p AS (
  SELECT repository, day, body.`when` AS pulled, day <= clock.horizon_day AS plausible, clock.today,
    clock.horizon_day, body.tag AS tag, body.error IS NOT NULL AS failed,
    body.method = 'GET' AND body.type = 'manifest' AND body.error IS NULL AS image_pull,
    actor.subject AS actor, body.remote_address AS client
  FROM {{pulls}} CROSS JOIN clock
), top AS (
  SELECT repository,
    ARRAY_AGG(STRUCT(tag AS tag, image_pulls AS image_pulls) ORDER BY image_pulls DESC, tag LIMIT 5) AS top_tags
  FROM (SELECT repository, tag, COUNT(*) AS image_pulls FROM p WHERE image_pull AND tag IS NOT NULL
        GROUP BY repository, tag)
  GROUP BY repository
), recomputed AS (
  -- Named and ordered as the table's columns: a row is compared with the table's as one JSON text.
  SELECT p.repository, COUNT(*) AS events, COUNTIF(image_pull) AS image_pulls, COUNTIF(failed) AS errors,
    COUNTIF(failed) / COUNT(*) AS error_rate, COUNT(DISTINCT actor) AS unique_actors,
    COUNT(DISTINCT client) AS unique_clients, MIN(IF(plausible, pulled, NULL)) AS first_seen,
    MAX(IF(plausible, pulled, NULL)) AS last_seen,
    COUNTIF(image_pull AND day BETWEEN DATE_SUB(today, INTERVAL 6 DAY) AND horizon_day) AS image_pulls_last_7d,
    COUNTIF(image_pull AND day BETWEEN DATE_SUB(today, INTERVAL 29 DAY) AND horizon_day) AS image_pulls_last_30d,
    IFNULL(ANY_VALUE(top.top_tags), []) AS top_tags
  FROM p LEFT JOIN top USING (repository)
  GROUP BY p.repository
), stored AS (
  -- Not "current": CURRENT is a reserved keyword of GoogleSQL.
  SELECT repository, events, image_pulls, errors, error_rate, unique_actors, unique_clients, first_seen, last_seen,
    image_pulls_last_7d, image_pulls_last_30d, top_tags
  FROM {{summary}}
), compared AS (
  -- BigQuery compares neither whole rows nor arrays: their JSON texts stand for them (DuckDB: r IS DISTINCT FROM c).
  SELECT COALESCE(r.repository, c.repository) AS repository, r.repository IS NOT NULL AS recomputed,
    r.repository IS NULL OR c.repository IS NULL OR TO_JSON_STRING(r) != TO_JSON_STRING(c) AS differs
  FROM recomputed r FULL JOIN stored c ON c.repository = r.repository
)
SELECT COUNTIF(recomputed) AS compared, COUNTIF(differs) AS differing,
  -- Numbered rather than LIMITed: LIMIT takes a literal or query parameter, not a script variable.
  ARRAY(SELECT repository FROM (
    SELECT repository, ROW_NUMBER() OVER (ORDER BY repository) AS n FROM compared WHERE differs)
    WHERE n <= v_examples ORDER BY repository) AS examples
FROM compared;
