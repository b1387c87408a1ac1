-- search_candidates() judged on the caller's rows only (replaces 0012's two-argument form).
--
-- 0012 decided "common term" (NULL) or "selective" (ids) over the whole org. The query service
-- counts a selective term exactly and a common one as a bounded lower bound, so a user who
-- sees many rows could tell from `total_count_exact` whether hidden executions of other
-- agents mention a term. Now the caller names the agents it may list (`agent_names`; NULL
-- for an admin, who sees the whole org), and every row the function reads, for its sample
-- and for its probe, is of the transaction's org AND of those agents: its answer depends on
-- nothing the caller cannot see. `agent_names` only narrows: the org still comes from
-- `fleetwatch.org`, never from a parameter, and the caller re-reads the ids under RLS.
--
-- search_candidates(pattern, cap, agent_names): as 0012 over those agents' rows (`pattern`
-- is an escaped `%...%` LIKE pattern; the ids, newest first, when fewer than `cap` match;
-- NULL when the term is common: at least `cap` matches, or at least 4 in the newest 500
-- rows). An empty `agent_names`, no org set or a `cap` below 1: an empty array.
DROP FUNCTION IF EXISTS search_candidates(text, integer);

CREATE OR REPLACE FUNCTION search_candidates(pattern text, cap integer, agent_names text[])
RETURNS text[]
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    v_org text := nullif(current_setting('fleetwatch.org', true), '');
    v_messages text[];
    v_responses text[];
    v_words text[] := '{}';
    v_word text;
    v_seen bigint;
    v_fewest bigint;
    v_probe text := pattern;
    v_ids text[];
BEGIN
    IF v_org IS NULL OR pattern IS NULL OR cap IS NULL OR cap < 1
       OR cardinality(agent_names) = 0 THEN
        RETURN '{}'::text[];
    END IF;
    -- Custom plans (above): `agent_names IS NULL` folds away, each statement keeps its index.
    SELECT array_agg(n.message), array_agg(n.response) INTO v_messages, v_responses
    FROM (SELECT message, response FROM executions
          WHERE org = v_org AND (agent_names IS NULL OR agent_name = ANY(agent_names))
          ORDER BY sort_at DESC, id DESC LIMIT 500) AS n;
    SELECT count(*) INTO v_seen FROM unnest(v_messages, v_responses) AS x(m, r)
    WHERE x.m ILIKE pattern OR x.r ILIKE pattern;
    IF v_seen >= 4 THEN
        RETURN NULL;  -- common: the ordered scan finds a page within a few thousand rows
    END IF;
    -- Several words: probe with the rarest one (escapes never contain a space).
    IF left(pattern, 1) = '%' AND right(pattern, 1) = '%' AND length(pattern) > 2 THEN
        v_words := string_to_array(substr(pattern, 2, length(pattern) - 2), ' ');
    END IF;
    IF cardinality(v_words) > 1 THEN
        FOREACH v_word IN ARRAY v_words LOOP
            CONTINUE WHEN length(replace(v_word, '\', '')) < 3;
            SELECT count(*) INTO v_seen FROM unnest(v_messages, v_responses) AS x(m, r)
            WHERE x.m ILIKE '%' || v_word || '%' OR x.r ILIKE '%' || v_word || '%';
            IF v_fewest IS NULL OR v_seen < v_fewest
               OR (v_seen = v_fewest AND length(v_word) > length(v_probe) - 2) THEN
                v_fewest := v_seen;
                v_probe := '%' || v_word || '%';
            END IF;
        END LOOP;
        IF v_fewest IS NULL OR v_fewest >= 4 THEN
            v_probe := pattern;  -- no rare word: the whole pattern's trigrams
        END IF;
    END IF;
    WITH probed AS MATERIALIZED (
        SELECT e.id, e.sort_at, e.message, e.response FROM executions AS e
        WHERE e.org = v_org AND (agent_names IS NULL OR e.agent_name = ANY(agent_names))
            AND (e.message ILIKE v_probe OR e.response ILIKE v_probe)
    )
    SELECT array_agg(c.id ORDER BY c.sort_at DESC, c.id DESC) INTO v_ids
    FROM (SELECT p.id, p.sort_at FROM probed AS p
          WHERE p.message ILIKE pattern OR p.response ILIKE pattern LIMIT cap) AS c;
    IF cardinality(v_ids) >= cap THEN
        RETURN NULL;
    END IF;
    RETURN coalesce(v_ids, '{}'::text[]);
END
$$;

REVOKE ALL ON FUNCTION search_candidates(text, integer, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION search_candidates(text, integer, text[]) TO fleetwatch_app;
