-- The list filtered by project or workflow walks these in list order (sort_at DESC, id DESC)
-- instead of sorting every matching row.
CREATE INDEX IF NOT EXISTS executions_by_project
    ON executions (org, project, sort_at DESC, id DESC) WHERE project IS NOT NULL;
CREATE INDEX IF NOT EXISTS executions_by_workflow
    ON executions (org, workflow, sort_at DESC, id DESC) WHERE workflow IS NOT NULL;
