// The filter bar: agent, status, trigger, time range, debounced search, "Clear filters".

import { debounce, h } from "./dom.js";
import { RANGES, linkFilters } from "./filters.js";
import { STATUSES, TRIGGERS } from "./format.js";

const SEARCH_DEBOUNCE_MS = 350;

function select(name, label, options, value) {
  // A link may ask for what the form does not offer (`status=failed,running`): show it as is.
  if (value && !options.some(([v]) => v === value)) options = [...options, [value, value.split(",").join(", ")]];
  return h(
    "label",
    { class: "field" },
    h("span", {}, label),
    h(
      "select",
      { name, "data-filter": name },
      options.map(([v, text]) => h("option", { value: v, selected: v === (value ?? "") }, text)),
    ),
  );
}

/**
 * The form for `filters`. `onChange(patch, {keepForm})` gets the changed filter only (the form
 * may outlive several changes while the user types); "Clear filters" calls `onClear()`.
 * `anyAgent` offers "All agents" (clients must pick one of their agents).
 */
export function filterBar({ filters, agents, anyAgent, onChange, onClear }) {
  const agentOptions = agents.map((a) => [a.name, a.display_name || a.name]);
  if (anyAgent) agentOptions.unshift(["", "All agents"]);
  if (filters.agent_name && !agents.some((a) => a.name === filters.agent_name)) {
    agentOptions.push([filters.agent_name, filters.agent_name]);
  }
  const search = h("input", {
    type: "search",
    name: "search",
    "data-filter": "search",
    placeholder: "Search messages and responses",
    value: filters.search ?? "",
  });
  const form = h(
    "form",
    { class: "filters", role: "search", onsubmit: (e) => e.preventDefault() },
    select("agent_name", "Agent", agentOptions, filters.agent_name),
    select("status", "Status", [["", "Any status"], ...STATUSES.map((x) => [x, x])], filters.status),
    select("triggered_by", "Trigger", [["", "Any trigger"], ...TRIGGERS.map((x) => [x, x])], filters.triggered_by),
    select("hours", "Time range", RANGES, filters.hours),
    h("label", { class: "field field-search" }, h("span", {}, "Search"), search),
    h("button", { class: "btn btn-clear", type: "button", onclick: () => onClear() }, "Clear filters"),
  );
  const linked = linkFilters(filters);
  if (linked.length) {
    // Filters a shared link carries that the form has no field for: say they apply.
    form.append(
      h(
        "p",
        { class: "link-filters muted small", "data-link-filters": "" },
        "Also filtered by the link: ",
        linked.map(([k, v]) => h("code", {}, `${k}=${v}`)).flatMap((el, i) => (i ? [", ", el] : [el])),
        " ",
        h("button", { class: "btn", type: "button", onclick: () => withSearch(Object.fromEntries(linked.map(([k]) => [k, ""]))) }, "Remove"),
      ),
    );
  }
  // Typing keeps the same form (and focus); the list follows once the user pauses.
  const searchChanged = debounce(() => onChange({ search: search.value.trim() }, { keepForm: true }), SEARCH_DEBOUNCE_MS);
  search.addEventListener("input", searchChanged);
  // Any other change replaces the form: a search still waiting for its pause goes with it (as
  // typed), or it would land later under a new form whose box does not show it.
  const withSearch = (patch) => {
    searchChanged.cancel();
    onChange({ ...patch, search: search.value.trim() });
  };
  for (const el of form.querySelectorAll("select")) {
    el.addEventListener("change", () => withSearch({ [el.name]: el.value }));
  }
  /** The page replaces this form (Clear filters, say): a search still waiting is dropped. */
  form.cancelSearch = () => searchChanged.cancel();
  return form;
}
