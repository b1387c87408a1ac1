// The list's order, as the API's: newest start first, then id (a keyset over (started_at, id)).

import { parseApiTime } from "./filters.js";

/** When an execution started (ms), or null when the row does not say. */
export function startOf(exec) {
  return exec ? (parseApiTime(exec.started_at)?.getTime() ?? null) : null;
}

/** Does `a` come before `b` in the list? Both have a start. */
export function sortsBefore(a, b) {
  const sa = startOf(a);
  const sb = startOf(b);
  return sa !== sb ? sa > sb : a.id > b.id;
}

/**
 * Where a row with a start goes among `shown` (rows in list order): the id of the first row with
 * a start that it comes before, or null when it comes after them all. Rows without a start stay
 * where the API put them (they sort by first sight, which the API does not show).
 */
export function placeAmong(shown, exec) {
  for (const row of shown) if (row.id !== exec.id && startOf(row) !== null && sortsBefore(exec, row)) return row.id;
  return null;
}
