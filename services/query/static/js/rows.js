// One execution as a row of the list (a card on a phone), and its Stop button.

import { api } from "./api.js";
import { h, toast } from "./dom.js";
import * as fmt from "./format.js";

export function executionHref(id) {
  return `/?execution=${encodeURIComponent(id)}`;
}

export function agentHref(name) {
  return `/?agent_name=${encodeURIComponent(name)}`;
}

/** A Stop button that asks once more before sending the terminate command. */
export function stopButton(exec) {
  let armed = null;
  const button = h("button", { class: "btn btn-stop", type: "button", "data-action": "stop" }, "Stop");
  button.addEventListener("click", async (event) => {
    event.stopPropagation();
    if (!armed) {
      button.textContent = "Confirm stop";
      button.classList.add("armed");
      armed = setTimeout(() => {
        armed = null;
        button.textContent = "Stop";
        button.classList.remove("armed");
      }, 4000);
      return;
    }
    clearTimeout(armed);
    button.disabled = true;
    button.textContent = "Stopping…";
    try {
      const reply = await api(`/api/executions/${encodeURIComponent(exec.id)}/terminate`, {
        method: "POST",
        body: {},
      });
      if (reply && reply.accepted === false) {
        toast(`${exec.agent_name} declined to stop: ${reply.reason ?? "no reason given"}`, "error");
        button.disabled = false;
        button.textContent = "Stop";
      } else {
        toast(`Stop requested for ${exec.agent_name}`, "success");
      }
    } catch (err) {
      toast(`Could not stop: ${err.message}`, "error");
      button.disabled = false;
      button.textContent = "Stop";
    }
    armed = null;
    button.classList.remove("armed");
  });
  return button;
}

export function statusBadge(status) {
  return h(
    "span",
    { class: `status status-${status}`, title: status },
    h("span", { class: "status-icon", "aria-hidden": "true" }, fmt.statusIcon(status)),
    h("span", { class: "status-text" }, status),
  );
}

export function timeCell(value) {
  return h("time", { datetime: value ?? "", title: fmt.exactTime(value), dataset: { rel: value ?? "" } }, fmt.relativeTime(value));
}

/** The row; `selected` is the set of ids ticked for comparison; `canStop`: not for clients. */
export function renderRow(exec, selected, onSelect, { canStop = true } = {}) {
  // Summaries may carry only `error_type`; the full error is on the detail page.
  const errorText = exec.error ? fmt.firstLine(exec.error, 80) : exec.error_type || (exec.has_error ? "error" : "");
  const errorTitle = exec.error || (exec.has_error ? "Open the execution for the full error" : "");
  const checkbox = h("input", {
    type: "checkbox",
    class: "pick",
    "aria-label": `Select ${exec.id} to compare`,
    checked: selected.has(exec.id),
  });
  checkbox.addEventListener("click", (e) => e.stopPropagation());
  checkbox.addEventListener("change", () => onSelect(exec.id, checkbox.checked));
  return h(
    "tr",
    { class: `row row-${exec.status}`, dataset: { id: exec.id, status: exec.status, agent: exec.agent_name } },
    h("td", { class: "c-pick" }, checkbox),
    h("td", { class: "c-status" }, statusBadge(exec.status)),
    h(
      "td",
      { class: "c-agent" },
      h("a", { href: agentHref(exec.agent_name), "data-nav": true, title: `Only ${exec.agent_name}` }, fmt.agentLabel(exec)),
    ),
    h("td", { class: "c-time" }, timeCell(exec.started_at ?? exec.first_seen_at)),
    h(
      "td",
      { class: "c-message" },
      h(
        "a",
        { href: executionHref(exec.id), "data-nav": true, title: exec.message ?? "" },
        exec.message ? fmt.firstLine(exec.message, 90) : h("span", { class: "muted" }, exec.id),
      ),
    ),
    h("td", { class: "c-trigger", "data-label": "trigger" }, exec.triggered_by ?? "—"),
    h("td", { class: "c-num c-duration", "data-label": "duration" }, fmt.duration(exec.duration_ms)),
    h("td", { class: "c-num c-cost", "data-label": "cost" }, fmt.cost(exec.cost)),
    h("td", { class: "c-num c-tokens", "data-label": "tokens in/out" }, fmt.tokens(exec)),
    h("td", { class: "c-error", title: errorTitle }, errorText),
    h("td", { class: "c-actions" }, canStop && exec.status === "running" ? stopButton(exec) : null),
  );
}

export function headerRow() {
  const cols = ["", "Status", "Agent", "Started", "Message", "Trigger", "Duration", "Cost", "Tokens in/out", "Error", ""];
  return h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col" }, c))));
}

/** Refresh every relative time on the page (called once a minute). */
export function refreshTimes(root = document) {
  for (const el of root.querySelectorAll("time[data-rel]")) {
    el.textContent = fmt.relativeTime(el.dataset.rel);
  }
}
