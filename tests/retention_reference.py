"""Retention's batch statements as the pass ran them before its window walks (shared/retention.py):
the reference the tests compare the walks' result with, and whose plans they read."""

from __future__ import annotations

from shared.retention import ORPHAN_EXPIRED

# Expired events searched from the table's start, `LIMIT` a batch, deleted by address.
OLD_DELETE_EVENTS_SQL = """
DELETE FROM events
WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM events WHERE org = $1 AND received_at < $2 LIMIT $3))
  AND org = $1 AND received_at < $2
"""

# Any `LIMIT` expired orphans of the org, found by a scan of all its steps.
OLD_DELETE_ORPHAN_STEPS_SQL = f"""
WITH doomed AS (
    SELECT c.execution_id, c.node_id, c.attempt FROM component_executions c
    WHERE {ORPHAN_EXPIRED}
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
DELETE FROM component_executions c USING doomed d
WHERE c.org = $1 AND c.execution_id = d.execution_id AND c.node_id = d.node_id
  AND c.attempt = d.attempt
"""
