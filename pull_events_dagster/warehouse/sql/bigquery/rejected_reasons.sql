-- The most frequent rejection reasons and their lines, for the rejected-rate audit (a scan of the rejected table,
-- which holds only the lines that could not be loaded). DuckDB: ../duckdb/rejected_reasons.sql.

-- name: reasons
SELECT reason, COUNT(*) AS n
FROM {{rejected}}
GROUP BY reason
ORDER BY n DESC, reason
LIMIT @n
