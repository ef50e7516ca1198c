-- What one load wrote, judged against the tables (the checks returned with the load's materialization). The
-- load's rows are the ones stamped with its $loaded_at; the pull rows they could collide with are in the same
-- day partitions ($days), so zone maps skip every other row group. BigQuery: ../bigquery/loaded_rows.sql.

-- name: days
CREATE OR REPLACE TEMP TABLE pe_days AS SELECT DISTINCT day FROM {{pulls}} WHERE loaded_at = $loaded_at;

-- name: figures
SELECT
    (SELECT count(*) FROM (
        SELECT event_source, event_id FROM {{pulls}}
        WHERE day BETWEEN $first_day AND $last_day AND list_contains($days, day)
            AND (event_source, event_id) IN (SELECT event_source, event_id FROM {{pulls}} WHERE loaded_at = $loaded_at)
        GROUP BY ALL HAVING count(*) > 1))
    + (SELECT count(*) FROM (
        -- Other events are de-duplicated within the day of their time: the days the load's events are dated on.
        SELECT event_source, event_id FROM {{events}}
        WHERE (CAST(event_time AS DATE) IN (SELECT CAST(event_time AS DATE) FROM {{events}} WHERE loaded_at = $loaded_at)
                OR event_time IS NULL
                    AND EXISTS (SELECT 1 FROM {{events}} WHERE loaded_at = $loaded_at AND event_time IS NULL))
            AND (event_source, event_id) IN (SELECT event_source, event_id FROM {{events}} WHERE loaded_at = $loaded_at)
        GROUP BY ALL HAVING count(*) > 1)) AS duplicate_keys,
    (SELECT count(*) FROM {{pulls}}
        WHERE loaded_at = $loaded_at AND (event_id IS NULL OR event_source IS NULL OR repository IS NULL
            OR body."when" IS NULL OR day IS NULL)) AS missing_required;
