-- Covering versions of two list indexes (same keys, which they replace), so that counts and
-- stats are answered from the index alone (index-only scans) instead of fetching rows:
--
-- * per agent: a count filtered by agent plus status / trigger / project / workflow walks the
--   agent's index entries only (1M rows, agent + status + trigger: ~4 ms, was ~200 ms);
-- * the list order: stats over a window (GROUP BY agent, trigger, status with cost and
--   duration sums) and the timeline read the window's index entries (24 h of one org at 1M
--   rows: ~6 ms, was ~33 ms).
--
-- Most included columns are keys of other indexes already (status, triggered_by, project,
-- workflow); cost and duration_ms normally arrive with the completion, which changes status
-- anyway: few updates that were HOT stop being HOT.
CREATE INDEX IF NOT EXISTS executions_by_agent_cover
    ON executions (org, agent_name, sort_at DESC, id DESC)
    INCLUDE (status, triggered_by, project, workflow);
DROP INDEX IF EXISTS executions_by_agent;
CREATE INDEX IF NOT EXISTS executions_list_cover
    ON executions (org, sort_at DESC, id DESC)
    INCLUDE (agent_name, status, triggered_by, cost, duration_ms);
DROP INDEX IF EXISTS executions_list;
