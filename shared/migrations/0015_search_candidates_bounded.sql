-- search_candidates() at a bounded cost per search (0014's function, same signature, owner,
-- grants and answers; only how it picks its plan changes).
--
-- 0014 judged a term on the caller's newest 500 rows by ILIKE over their whole message and
-- response (each up to 64 KB): once for the pattern, then once more for every word of a
-- multi-word term (up to ~50, repeats included). 40 words over 500 rows of 64 KB texts ran
-- past the 10 s statement timeout, and each word multiplied the database's CPU. Now:
--
-- * the sample holds the first 2,000 characters of each text (`left()`, which detoasts only
--   that slice). The sample only picks the plan (ids, or NULL for the ordered walk): the
--   probe below rechecks every candidate against the whole texts, and the caller rechecks
--   again under RLS with the same ILIKE, so the answers are those of 0014. A term that the
--   sample misjudges (one that occurs only past those characters) costs the probe's index
--   scan, which stops at `cap` matches (NULL), as for a term common only further back;
-- * the words are taken once each (lower-cased: ILIKE ignores case), those under three
--   characters skipped as before, and only the three longest are tried as the probe (the
--   rarest of them; ties go to the longer, then the earlier word). A search costs at most
--   four passes over the sample, whatever its number of words.
--
-- Like 0012 and 0014 this names nothing of pg_trgm: without it (embedded Postgres) the
-- migration applies and the probe matches sequentially.
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
    v_longest text[];
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
    FROM (SELECT left(message, 2000) AS message, left(response, 2000) AS response
          FROM executions
          WHERE org = v_org AND (agent_names IS NULL OR agent_name = ANY(agent_names))
          ORDER BY sort_at DESC, id DESC LIMIT 500) AS n;
    SELECT count(*) INTO v_seen FROM unnest(v_messages, v_responses) AS x(m, r)
    WHERE x.m ILIKE pattern OR x.r ILIKE pattern;
    IF v_seen >= 4 THEN
        RETURN NULL;  -- common: the ordered scan finds a page within a few thousand rows
    END IF;
    -- Several words: probe with the rarest of the longest three (escapes never hold a space).
    IF left(pattern, 1) = '%' AND right(pattern, 1) = '%' AND length(pattern) > 2 THEN
        v_words := string_to_array(substr(pattern, 2, length(pattern) - 2), ' ');
    END IF;
    IF cardinality(v_words) > 1 THEN
        SELECT coalesce(array_agg(w.word ORDER BY w.size DESC, w.first), '{}'::text[])
        INTO v_longest
        FROM (SELECT lower(x.word) AS word, length(replace(lower(x.word), '\', '')) AS size,
                     min(x.n) AS first
              FROM unnest(v_words) WITH ORDINALITY AS x(word, n)
              WHERE length(replace(x.word, '\', '')) >= 3
              GROUP BY lower(x.word)
              ORDER BY size DESC, first
              LIMIT 3) AS w;
        FOREACH v_word IN ARRAY v_longest LOOP
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

-- CREATE OR REPLACE keeps the function's owner and privileges; stated again all the same.
REVOKE ALL ON FUNCTION search_candidates(text, integer, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION search_candidates(text, integer, text[]) TO fleetwatch_app;
