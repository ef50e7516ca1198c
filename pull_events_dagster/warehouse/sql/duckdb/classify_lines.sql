{{into}}
WITH split AS ({{lines}}
), raw AS (
    SELECT s.object_id, k.object_key, s.position, s.problem, s.line,
        -- Blank: only JSON whitespace, whatever its length (most lines are told by their first character).
        coalesce(CASE WHEN s.line[1] NOT IN ('', ' ', chr(9), chr(13)) THEN false
            ELSE trim(s.line, $blank) = '' END, true) AS blank,
        -- An overlong line is never parsed: its size alone rejects it.
        CASE WHEN s.problem IS NULL AND strlen(s.line) <= $max_line THEN TRY_CAST(s.line AS JSON) END AS j
    FROM split s JOIN pe_keys k USING (object_id)
), parsed AS (
    SELECT *, CASE WHEN j IS NOT NULL AND (line[1] = '{' OR ltrim(line, $blank)[1] = '{')
        THEN from_json(j, $structure) END AS p
    FROM raw
), fields AS (
    SELECT *,
        {{id_text}} AS id, {{source_text}} AS source, {{type_text}} AS type, {{time_text}} AS time,
        {{type_text}} = $pull_type AS is_pull
    FROM parsed
), typed AS (
    -- The exact JSON types, read only for the rare lines whose parse cannot tell whether a value an object rule
    -- judges is an object (it holds no field: another type, or an empty object); every other line is parsed once.
    SELECT *, CASE WHEN {{undecided}} THEN json_type(j, $type_paths) END AS types
    FROM fields
), judged AS (
    SELECT *,
    {{reason}} AS reason
    FROM typed
), kept AS (
    -- A good line keeps its raw_event when it has more keys than its columns hold (an unknown extension, data
    -- field or claim, or a null value): key counts, one more parse per line (three for a line with policy results).
    SELECT *,
        CASE WHEN reason IS NULL AND is_pull
                AND coalesce(CAST(p.data.body.policy_results AS VARCHAR), 'null') <> 'null'
            THEN from_json(p.data.body.policy_results, $policy_structure) END AS policies,
        reason IS NULL AND (
            coalesce(
                CASE WHEN is_pull THEN len(flatten(json_keys(j, $pull_key_paths)))
                    ELSE len(json_keys(j)) END
                > {{held_top}} + CASE WHEN is_pull THEN {{held_pull}} ELSE 0 END,
                true)
            OR CASE WHEN policies IS NOT NULL THEN coalesce(
                coalesce(list_sum(list_transform(json_keys(j, $policy_path), lambda keys: len(keys))), 0)
                + len(list_filter(json_type(j, $policy_path), lambda t: t <> 'OBJECT'))
                > coalesce(list_sum(list_transform(policies, lambda r: {{held_policy}})), 0),
                true) ELSE false END
        ) AS keeps_raw
    FROM judged
)
SELECT
    object_id, coalesce(position, p.landing_line) AS position, blank, reason, strlen(line) AS line_bytes,
    CASE WHEN keeps_raw THEN j END AS raw_event,
    CASE WHEN reason IS NULL AND NOT is_pull THEN json_extract(j, '$.data') END AS event_data,
    -- The rejected-events table keeps the line as landed.
    CASE WHEN reason = 'line_too_large' THEN left(line, $prefix) WHEN reason IS NOT NULL THEN line END
        AS rejected_line,
    CASE WHEN p.landing_object IS DISTINCT FROM object_key THEN p.landing_object END AS landing_object,
    -- The line's own number when it names another object (a copy) and is a number; else where it is.
    CASE WHEN p.landing_object <> object_key AND p.landing_line >= 1 THEN p.landing_line
        ELSE coalesce(position, p.landing_line) END AS landing_line,
    id AS event_id, source AS event_source, type AS event_type, p.subject AS event_subject,
    TRY_CAST(time AS TIMESTAMPTZ) AS event_time, p."group" AS event_group,
    p.specversion AS event_specversion, p.datacontenttype AS event_datacontenttype,
    p.dataschema AS event_dataschema, p.audience AS event_audience, p.actor AS event_actor,
    {{received_at}} AS received_at, p.received_by, p.body_sha256, p.token_sha256,
    coalesce(is_pull, false) AS is_pull,
    CASE WHEN reason IS NULL AND is_pull THEN p.data.actor END AS actor,
    CASE WHEN reason IS NULL AND is_pull
        THEN CAST(struct_update(p.data.body, policy_results := policies) AS {{body_type}})
    END AS body
FROM kept
