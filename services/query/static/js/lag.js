// The live feed comes from NATS as events are published; the API reads the database ingest
// writes them to, which can lag the feed (under load, by more than the detail refresh's wait).
// A detail or compare page re-reads the API on an event: it keeps what the feed said, and a
// read that has less is read again a little later.

/** A status's place on the forward-only path pending → running → an end (ingest's rule). */
const RANK = { pending: 0, running: 1, success: 2, failed: 2, cancelled: 2 };

export const rankOf = (status) => RANK[status] ?? 0;

/** A step of an execution, as the API's components and the feed's `component` name it. */
const stepKey = (c) => `${c.node_id}/${c.attempt ?? 1}`;

/** What the feed has said of one execution: `{ rank, steps: Map(step -> rank) }`, or null. */
export function heard(before, message) {
  const now = before ?? { rank: 0, steps: new Map() };
  const step = message.component;
  if (step) {
    const key = stepKey(step);
    now.steps.set(key, Math.max(now.steps.get(key) ?? 0, rankOf(step.status)));
  } else {
    now.rank = Math.max(now.rank, rankOf(message.execution?.status));
  }
  return now;
}

/** Does `exec`, as the API read it, have less than the feed said (`said`, from heard)? */
export function readsBehind(said, exec) {
  if (!said || !exec) return false;
  if (rankOf(exec.status) < said.rank) return true;
  const steps = new Map();
  for (const c of exec.components ?? []) steps.set(stepKey(c), Math.max(steps.get(stepKey(c)) ?? 0, rankOf(c.status)));
  for (const [key, rank] of said.steps) if ((steps.get(key) ?? -1) < rank) return true;
  return false;
}
