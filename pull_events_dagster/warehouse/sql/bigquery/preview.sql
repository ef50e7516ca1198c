-- What a run of the derived tables shows in Dagster's UI: some days' totals and top repositories from those days'
-- daily_pulls partitions (v_days, spanning v_first_day..v_last_day: the span prunes the other partitions), and the
-- summary's totals and top repositories. Never reads the pull table. DuckDB: ../duckdb/preview.sql. bigquery.py
-- runs each statement on its own, after DECLAREs of the variables (v_top: how many repositories).

-- name: day_totals
SELECT day, SUM(image_pulls), SUM(events), SUM(errors), COUNT(*)
FROM {{daily}}
WHERE day BETWEEN v_first_day AND v_last_day AND day IN UNNEST(v_days)
GROUP BY day
ORDER BY day;

-- name: day_top
-- A variable as LIMIT is not GoogleSQL everywhere (bqemulator refuses it): the rows are numbered instead.
SELECT repository, image_pulls, events, errors FROM (
  SELECT repository, image_pulls, events, errors,
    ROW_NUMBER() OVER (ORDER BY image_pulls DESC, repository) AS n
  FROM (
    SELECT repository, SUM(image_pulls) AS image_pulls, SUM(events) AS events, SUM(errors) AS errors
    FROM {{daily}}
    WHERE day BETWEEN v_first_day AND v_last_day AND day IN UNNEST(v_days)
    GROUP BY repository
  )
)
WHERE n <= v_top
ORDER BY n;

-- name: summary_totals
SELECT COUNT(*), IFNULL(SUM(image_pulls), 0), IFNULL(SUM(events), 0), IFNULL(SUM(errors), 0)
FROM {{summary}};

-- name: summary_top
SELECT repository, image_pulls, events, errors FROM (
  SELECT repository, image_pulls, events, errors, ROW_NUMBER() OVER (ORDER BY image_pulls DESC, repository) AS n
  FROM {{summary}}
)
WHERE n <= v_top
ORDER BY n;
