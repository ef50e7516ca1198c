-- What a run of the derived tables shows in Dagster's UI: some days' totals and top repositories from those days'
-- daily_pulls rows ($days, spanning $first_day..$last_day), and the summary's totals and top repositories. Never
-- reads the pull table. BigQuery: ../bigquery/preview.sql.

-- name: day_totals
SELECT day, sum(image_pulls), sum(events), sum(errors), count(*)
FROM {{daily}}
WHERE day BETWEEN $first_day AND $last_day AND list_contains($days, day)
GROUP BY day
ORDER BY day;

-- name: day_top
SELECT repository, sum(image_pulls) AS image_pulls, sum(events), sum(errors)
FROM {{daily}}
WHERE day BETWEEN $first_day AND $last_day AND list_contains($days, day)
GROUP BY repository
ORDER BY image_pulls DESC, repository
LIMIT $top;

-- name: summary_totals
SELECT count(*), coalesce(sum(image_pulls), 0), coalesce(sum(events), 0), coalesce(sum(errors), 0)
FROM {{summary}};

-- name: summary_top
SELECT repository, image_pulls, events, errors
FROM {{summary}}
ORDER BY image_pulls DESC, repository
LIMIT $top;
