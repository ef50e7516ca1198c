-- Recompute the summary rows of the marked repositories (and, when the clock's day has turned, of every
-- repository with daily rows in $window_first..$window_last, whose time windows moved) from daily_pulls and
-- the running totals of repository_values, in the caller's transaction. Never reads the pull table.
-- Time windows are whole UTC days: $today is the day of $computed_at (the transaction's now()), $horizon_day the
-- day of it plus the future tolerance; pulls dated after the horizon day count in no time-based figure.
-- BigQuery: ../bigquery/refresh_repository_summary.sql. The same figures from the pull table: summary_audit.sql.

-- name: targets
CREATE OR REPLACE TEMP TABLE pe_summary_targets AS
SELECT repository FROM {{pending}}
UNION
SELECT repository FROM {{daily}} WHERE $day_turned AND day BETWEEN $window_first AND $window_last;

-- name: delete_targets
DELETE FROM {{summary}} WHERE repository IN (SELECT repository FROM pe_summary_targets);

-- name: insert_targets
INSERT INTO {{summary}} (repository, events, image_pulls, errors, error_rate, unique_actors, unique_clients,
    first_seen, last_seen, image_pulls_last_7d, image_pulls_last_30d, top_tags, computed_at)
WITH figures AS (
    SELECT repository,
        sum(events) AS events,
        sum(image_pulls) AS image_pulls,
        sum(errors) AS errors,
        min(first_pull) FILTER (day <= $horizon_day) AS first_seen,
        max(last_pull) FILTER (day <= $horizon_day) AS last_seen,
        coalesce(sum(image_pulls) FILTER (day BETWEEN $today - 6 AND $horizon_day), 0) AS last_7d,
        coalesce(sum(image_pulls) FILTER (day BETWEEN $today - 29 AND $horizon_day), 0) AS last_30d
    FROM {{daily}} SEMI JOIN pe_summary_targets USING (repository)
    GROUP BY repository
), members AS (
    SELECT repository,
        count(*) FILTER (kind = 'actor') AS unique_actors,
        count(*) FILTER (kind = 'client') AS unique_clients,
        list({'tag': value, 'image_pulls': image_pulls} ORDER BY image_pulls DESC, value)
            FILTER (kind = 'tag')[1:5] AS top_tags
    FROM {{repository_values}} SEMI JOIN pe_summary_targets USING (repository)
    WHERE days > 0
    GROUP BY repository
)
SELECT f.repository, f.events, f.image_pulls, f.errors, f.errors / f.events,
    coalesce(m.unique_actors, 0), coalesce(m.unique_clients, 0), f.first_seen, f.last_seen, f.last_7d, f.last_30d,
    coalesce(m.top_tags, []), $computed_at
FROM figures f LEFT JOIN members m USING (repository);

-- name: clear_pending
DELETE FROM {{pending}};

-- name: recomputed
SELECT count(*) FROM pe_summary_targets;
