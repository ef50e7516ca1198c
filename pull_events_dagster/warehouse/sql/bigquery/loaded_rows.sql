-- What one load wrote, judged against the tables (the checks returned with the load's materialization). The
-- load's rows are the ones stamped with its v_loaded_at; the rows they could collide with are in the same
-- partitions: the pull table's days v_days (span v_first_day..v_last_day), and the events table's days of
-- event_time v_event_days (span v_first_event_day..v_last_event_day; its NULL partition when
-- v_null_event_day). Every table is read in those partitions only. DuckDB: ../duckdb/loaded_rows.sql, which
-- finds the days in a statement of its own; bigquery.py has them from the merge script's per-object figures.

-- name: figures
WITH loaded_pulls AS (
  SELECT event_source, event_id,
    event_id IS NULL OR event_source IS NULL OR repository IS NULL OR body.`when` IS NULL OR day IS NULL
      AS incomplete
  FROM {{pulls}}
  WHERE (day BETWEEN v_first_day AND v_last_day AND day IN UNNEST(v_days) OR day IS NULL)
    AND loaded_at = v_loaded_at
), touched_events AS (
  SELECT event_source, event_id, loaded_at FROM {{events}}
  WHERE event_time >= TIMESTAMP(v_first_event_day)
      AND event_time < TIMESTAMP_ADD(TIMESTAMP(v_last_event_day), INTERVAL 1 DAY)
      AND DATE(event_time) IN UNNEST(v_event_days)
    OR event_time IS NULL AND v_null_event_day
)
SELECT
  (SELECT COUNT(*) FROM (
    SELECT t.event_source, t.event_id FROM {{pulls}} t
    JOIN (SELECT DISTINCT event_source, event_id FROM loaded_pulls) l
      ON l.event_source = t.event_source AND l.event_id = t.event_id
    WHERE t.day BETWEEN v_first_day AND v_last_day AND t.day IN UNNEST(v_days)
    GROUP BY t.event_source, t.event_id HAVING COUNT(*) > 1))
  + (SELECT COUNT(*) FROM (
    SELECT t.event_source, t.event_id FROM touched_events t
    JOIN (SELECT DISTINCT event_source, event_id FROM touched_events WHERE loaded_at = v_loaded_at) l
      ON l.event_source = t.event_source AND l.event_id = t.event_id
    GROUP BY t.event_source, t.event_id HAVING COUNT(*) > 1)) AS duplicate_keys,
  (SELECT COUNTIF(incomplete) FROM loaded_pulls) AS missing_required;
