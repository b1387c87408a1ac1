-- The reconciler looks rows up by engine run id across every org (a run id is unique per
-- engine namespace, not per org, and rows of other orgs using it decide whether a run can be
-- attributed). The index led by org could not serve that: each pass scanned every row of
-- the engine. Nothing else reads by run id, so it is replaced.
CREATE INDEX IF NOT EXISTS executions_by_run
    ON executions (engine, external_id, org) WHERE external_id IS NOT NULL;
DROP INDEX IF EXISTS executions_external;
