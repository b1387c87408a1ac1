-- The per-agent list index carries the other list filters' columns, so that a count or a page
-- filtered by agent plus status / trigger / project / workflow is answered from the index
-- alone (an index-only scan over the agent's entries) instead of fetching every one of the
-- agent's rows from the heap: with 1M rows, agent + status + trigger counted in ~4 ms, not
-- ~200 ms. Same key as `executions_by_agent`, which it replaces.
CREATE INDEX IF NOT EXISTS executions_by_agent_cover
    ON executions (org, agent_name, sort_at DESC, id DESC)
    INCLUDE (status, triggered_by, project, workflow);
DROP INDEX IF EXISTS executions_by_agent;
