-- Selective search under row-level security.
--
-- `ILIKE` (texticlike) is not leakproof, so under the app role's RLS policy the planner may
-- not use it as an index condition: the trigram indexes of 0002 were never used by the API,
-- and a rare term read the whole org. This function runs as its owner (the migrating role,
-- which RLS does not filter), so its query can use the trigram indexes; it answers only for
-- the org set in the caller's transaction (`fleetwatch.org`, the very setting the RLS policy
-- trusts; never a parameter), and only ids: the caller re-reads the rows under RLS with every
-- filter and the same ILIKE (`id = ANY(...)` is leakproof, so the primary key serves it).
--
-- search_candidates(pattern, cap): `pattern` is a LIKE pattern (already escaped, `%...%`).
-- Returns every id of the org whose message or response matches, newest first, when there
-- are fewer than `cap`; NULL when the term is common (at least `cap` matches, or at least
-- 4 in the org's newest 500 rows): then the list's ordered index scan with the ILIKE as a
-- filter finds a page quickly and the caller keeps that plan. With no org set (or a `cap`
-- below 1) it returns an empty array.
--
-- A term of several words probes the trigram indexes with its rarest word of three or more
-- characters (fewest matches among the org's newest 500 rows) and rechecks the whole
-- pattern on those rows: "customer 4242" must otherwise walk the posting lists of the
-- trigrams of "customer", which are in every row (~3,000 index pages, 30-50 ms at 1M rows);
-- "4242" alone reads ~500. Neither a combined message||response index nor `org` in the GIN
-- index (btree_gin) should change that cost (not built nor measured): it is the frequent
-- trigrams' posting lists, and the org filter only rechecks a few more heap rows. Without pg_trgm (embedded Postgres) the same
-- function works by sequential matching.
CREATE OR REPLACE FUNCTION search_candidates(pattern text, cap integer)
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
    IF v_org IS NULL OR pattern IS NULL OR cap IS NULL OR cap < 1 THEN
        RETURN '{}'::text[];
    END IF;
    SELECT array_agg(n.message), array_agg(n.response) INTO v_messages, v_responses
    FROM (SELECT message, response FROM executions
          WHERE org = v_org ORDER BY sort_at DESC, id DESC LIMIT 500) AS n;
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
        WHERE e.org = v_org AND (e.message ILIKE v_probe OR e.response ILIKE v_probe)
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

REVOKE ALL ON FUNCTION search_candidates(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION search_candidates(text, integer) TO fleetwatch_app;
