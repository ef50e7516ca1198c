-- Recompute some days of daily_pulls and of the repository summary's state (daily_repository_values, and the
-- running totals in repository_values), delete-then-insert, in the caller's transaction. Reads only the pull
-- table's rows of those days ($days, spanning $first_day..$last_day: zone maps skip every other row group).
-- BigQuery: ../bigquery/refresh_daily_pulls.sql.

-- name: day_pulls
CREATE OR REPLACE TEMP TABLE pe_day_pulls AS
SELECT day, repository, body."when" AS pulled, actor.subject AS actor, body.remote_address AS client, body.tag AS tag,
    body.method = 'GET' AND body.type = 'manifest' AND body.error IS NULL AS image_pull,
    body.method = 'HEAD' AND body.type = 'manifest' AS manifest_head,
    body.method = 'GET' AND body.type = 'blob' AS blob_get,
    body.error IS NOT NULL AS failed
FROM {{pulls}}
WHERE day BETWEEN $first_day AND $last_day AND list_contains($days, day);

-- name: new_daily
CREATE OR REPLACE TEMP TABLE pe_new_daily AS
SELECT day, repository,
    count(*) AS events,
    count(*) FILTER (image_pull) AS image_pulls,
    count(*) FILTER (manifest_head) AS manifest_heads,
    count(*) FILTER (blob_get) AS blob_gets,
    count(*) FILTER (failed) AS errors,
    count(DISTINCT actor) AS unique_actors,
    count(DISTINCT client) AS unique_clients,
    min(pulled) AS first_pull,
    max(pulled) AS last_pull
FROM pe_day_pulls
GROUP BY day, repository;

-- name: new_values
-- Each day's distinct actors and clients of a repository, and its tags with their image pulls.
CREATE OR REPLACE TEMP TABLE pe_new_values AS
SELECT DISTINCT day, repository, 'actor' AS kind, actor AS value, NULL::BIGINT AS image_pulls
FROM pe_day_pulls WHERE actor IS NOT NULL
UNION ALL
SELECT DISTINCT day, repository, 'client', client, NULL FROM pe_day_pulls WHERE client IS NOT NULL
UNION ALL
SELECT day, repository, 'tag', tag, count(*) FROM pe_day_pulls WHERE image_pull AND tag IS NOT NULL GROUP BY ALL;

-- name: value_delta
-- What the running totals gain and lose: the days' new values minus what the same days held before.
CREATE OR REPLACE TEMP TABLE pe_value_delta AS
SELECT repository, kind, value, sum(sign) AS days, sum(sign * coalesce(image_pulls, 0)) AS image_pulls
FROM (
    SELECT repository, kind, value, image_pulls, 1 AS sign FROM pe_new_values
    UNION ALL
    SELECT repository, kind, value, image_pulls, -1 AS sign FROM {{daily_values}}
    WHERE day BETWEEN $first_day AND $last_day AND list_contains($days, day)
)
GROUP BY ALL
HAVING sum(sign) <> 0 OR sum(sign * coalesce(image_pulls, 0)) <> 0;

-- name: mark_changed
-- The repositories whose figures changed, for the summary to recompute: a daily row that differs, or a value
-- gained or lost.
INSERT INTO {{pending}} (repository, marked_at)
SELECT DISTINCT repository, now() FROM (
    SELECT repository FROM (
        SELECT * EXCLUDE (computed_at) FROM {{daily}}
        WHERE day BETWEEN $first_day AND $last_day AND list_contains($days, day)
        EXCEPT ALL
        SELECT * FROM pe_new_daily
    )
    UNION ALL
    SELECT repository FROM (
        SELECT * FROM pe_new_daily
        EXCEPT ALL
        SELECT * EXCLUDE (computed_at) FROM {{daily}}
        WHERE day BETWEEN $first_day AND $last_day AND list_contains($days, day)
    )
    UNION ALL
    SELECT repository FROM pe_value_delta
);

-- name: apply_delta
MERGE INTO {{repository_values}} AS r
USING pe_value_delta AS d
ON r.repository = d.repository AND r.kind = d.kind AND r.value = d.value
WHEN MATCHED AND r.days + d.days <= 0 THEN DELETE
WHEN MATCHED THEN UPDATE SET
    days = r.days + d.days,
    image_pulls = CASE WHEN d.kind = 'tag' THEN coalesce(r.image_pulls, 0) + d.image_pulls END
WHEN NOT MATCHED THEN INSERT (repository, kind, value, days, image_pulls)
    VALUES (d.repository, d.kind, d.value, d.days, CASE WHEN d.kind = 'tag' THEN d.image_pulls END);

-- name: delete_daily
DELETE FROM {{daily}} WHERE day BETWEEN $first_day AND $last_day AND list_contains($days, day);

-- name: insert_daily
INSERT INTO {{daily}} (day, repository, events, image_pulls, manifest_heads, blob_gets, errors, unique_actors,
    unique_clients, first_pull, last_pull, computed_at)
SELECT *, now() FROM pe_new_daily ORDER BY day, repository;

-- name: delete_values
DELETE FROM {{daily_values}} WHERE day BETWEEN $first_day AND $last_day AND list_contains($days, day);

-- name: insert_values
-- In day order, so that zone maps let the next recompute of a day skip every other day's row groups.
INSERT INTO {{daily_values}} (day, repository, kind, value, image_pulls) SELECT * FROM pe_new_values ORDER BY ALL;

-- name: rows_per_day
SELECT day, count(*) FROM pe_new_daily GROUP BY day;
