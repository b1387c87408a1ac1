// How numbers, times and statuses read on the page.

export const STATUSES = ["pending", "running", "success", "failed", "cancelled"];
export const TRIGGERS = ["manual", "schedule", "agent", "user", "mcp", "api"];

const ICONS = { pending: "◷", running: "◌", success: "✓", failed: "✕", cancelled: "⊘" };

export function statusIcon(status) {
  return ICONS[status] ?? "•";
}

export function parseTime(value) {
  if (!value) return null;
  const t = new Date(value);
  return Number.isNaN(t.getTime()) ? null : t;
}

/** "3 min ago", "in 2 h", "just now". */
export function relativeTime(value, now = Date.now()) {
  const t = parseTime(value);
  if (!t) return "—";
  const diff = (t.getTime() - now) / 1000;
  const abs = Math.abs(diff);
  if (abs < 10) return "just now";
  let text;
  if (abs < 60) text = `${Math.round(abs)} s`;
  else if (abs < 3600) text = `${Math.round(abs / 60)} min`;
  else if (abs < 86400) text = `${Math.round(abs / 3600)} h`;
  else if (abs < 86400 * 60) text = `${Math.round(abs / 86400)} d`;
  else return t.toLocaleDateString();
  return diff < 0 ? `${text} ago` : `in ${text}`;
}

export function exactTime(value) {
  const t = parseTime(value);
  if (!t) return "";
  return `${t.toLocaleString()} (${t.toISOString()})`;
}

export function duration(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms < 999.5) return `${Math.round(ms)} ms`;
  const sec = ms / 1000;
  // Rounded first, then split: 119.6 s is "2 m 0 s", never "1 m 60 s".
  if (sec < 9.95) return `${sec.toFixed(1)} s`;
  const whole = Math.round(sec);
  if (whole < 60) return `${whole} s`;
  const min = Math.floor(whole / 60);
  if (min < 60) return `${min} m ${whole % 60} s`;
  return `${Math.floor(min / 60)} h ${min % 60} m`;
}

/** "$12,345.67": grouped in the reader's locale, as count() groups its numbers. */
export function cost(value) {
  if (value === null || value === undefined) return "—";
  const n = Number(value);
  if (n === 0) return "$0";
  // Below a cent, 4 decimals; a negative amount (a refund) reads "-$5.00", not "$-5.0000".
  const digits = Math.abs(n) < 0.01 ? 4 : 2;
  const text = Math.abs(n).toLocaleString(undefined, {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
  return n < 0 ? `-$${text}` : `$${text}`;
}

export function count(value) {
  if (value === null || value === undefined) return "—";
  const n = Number(value);
  // Rounded as it will read: 999,960 is "1.0M", never "1000.0k".
  if (n >= 999_950) return `${(n / 1_000_000).toFixed(1)}M`;
  if (n >= 10_000) return `${(n / 1000).toFixed(1)}k`;
  return n.toLocaleString();
}

export function tokens(exec) {
  const tin = exec.tokens_in;
  const tout = exec.tokens_out;
  if (tin == null && tout == null) return "—";
  return `${count(tin ?? 0)} / ${count(tout ?? 0)}`;
}

export function firstLine(text, max = 120) {
  if (!text) return "";
  const line = String(text).split("\n")[0];
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}

const agentNames = new Map();

/** Display names from /api/agents, for live events (which carry only the agent's name). */
export function setAgentNames(agents) {
  agentNames.clear();
  for (const a of agents) if (a.display_name) agentNames.set(a.name, a.display_name);
}

export function agentLabel(exec) {
  return exec.agent_display_name || agentNames.get(exec.agent_name) || exec.agent_name;
}
