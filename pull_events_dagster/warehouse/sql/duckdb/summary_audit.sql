-- repository_pull_summary as defined, computed from the whole pull table (a full scan: the scheduled audit
-- runs it, never a load), compared row by row with the table as of $as_of (its latest computed_at).
-- BigQuery: ../bigquery/summary_audit.sql.

-- name: differences
WITH clock AS (
    SELECT CAST($as_of AS DATE) AS today, CAST(CAST($as_of AS TIMESTAMP) + $tolerance AS DATE) AS horizon_day
), p AS (
    SELECT repository, day, body."when" AS pulled, day <= clock.horizon_day AS plausible, clock.today,
        clock.horizon_day, body.tag AS tag, body.error IS NOT NULL AS failed,
        body.method = 'GET' AND body.type = 'manifest' AND body.error IS NULL AS image_pull,
        actor.subject AS actor, body.remote_address AS client
    FROM {{pulls}} CROSS JOIN clock
), top AS (
    SELECT repository, list({'tag': tag, 'image_pulls': image_pulls} ORDER BY image_pulls DESC, tag)[1:5] AS top_tags
    FROM (SELECT repository, tag, count(*) AS image_pulls FROM p WHERE image_pull AND tag IS NOT NULL GROUP BY ALL)
    GROUP BY repository
), recomputed AS (
    SELECT p.repository, count(*) AS events, count(*) FILTER (image_pull) AS image_pulls,
        count(*) FILTER (failed) AS errors, (count(*) FILTER (failed)) / count(*) AS error_rate,
        count(DISTINCT actor) AS unique_actors, count(DISTINCT client) AS unique_clients,
        min(pulled) FILTER (plausible) AS first_seen, max(pulled) FILTER (plausible) AS last_seen,
        count(*) FILTER (image_pull AND day BETWEEN today - 6 AND horizon_day) AS image_pulls_last_7d,
        count(*) FILTER (image_pull AND day BETWEEN today - 29 AND horizon_day) AS image_pulls_last_30d,
        coalesce(any_value(top.top_tags), []) AS top_tags
    FROM p LEFT JOIN top USING (repository)
    GROUP BY p.repository
), current AS (
    SELECT * EXCLUDE (computed_at) FROM {{summary}}
)
SELECT count(r.repository),
    count(*) FILTER (r.repository IS NULL OR c.repository IS NULL OR r IS DISTINCT FROM c),
    list(coalesce(r.repository, c.repository) ORDER BY coalesce(r.repository, c.repository))
        FILTER (r.repository IS NULL OR c.repository IS NULL OR r IS DISTINCT FROM c)[1:$examples]
FROM recomputed r FULL JOIN current c USING (repository);
