// The console list: one row per port with its state, writer and viewers, refreshed every few seconds.
// Rows are updated in place (keyed by port name) so that a refresh never takes keyboard focus away.
// Ports with a "group" (scale-set instances web-ss-0, web-ss-1, ...) are listed in one table per group,
// captioned with the group's name; the others stay in the first table.
import {
  api, confirmAction, consoleHref, describeState, describeWriter, plainLine, portPath, setText, showAccount,
} from "./common.js";

const REFRESH_MS = 5_000;
const rows = new Map(); // port name -> { tr, cells..., toggle }
const $ = (id) => document.getElementById(id);
const tbody = $("port-rows");
const groupTables = new Map(); // group name -> { table, tbody }
const COLUMNS = ["Console", "State", "Writer", "Viewers", "Device"];
const status = $("status");
let consoleEnabled = null;

function makeRow(name) {
  const tr = document.createElement("tr");
  const cell = () => tr.appendChild(document.createElement("td"));

  const nameCell = document.createElement("th");
  nameCell.scope = "row";
  tr.appendChild(nameCell);
  const open = document.createElement("a");
  open.href = consoleHref(name);
  open.textContent = name;
  nameCell.appendChild(open);

  const state = cell();
  const writer = cell();
  const viewers = cell();
  const device = cell();
  const actions = cell();
  actions.className = "actions";

  const watch = document.createElement("a");
  watch.href = consoleHref(name, { readOnly: true });
  watch.textContent = "Watch";
  watch.setAttribute("aria-label", `Watch ${name} read-only`);
  actions.appendChild(watch);

  const toggle = document.createElement("button");
  toggle.type = "button";
  toggle.addEventListener("click", () => togglePort(name, row));
  actions.appendChild(toggle);

  const row = { tr, state, writer, viewers, device, toggle, enabled: true };
  return row;
}

function updateRow(row, port) {
  const name = port.name;
  setText(row.state, describeState(port));
  row.tr.dataset.state = typeof port.state === "string" ? port.state : "unknown";
  setText(row.writer, describeWriter(port.writer));
  setText(row.viewers, String(Number(port.viewers) || 0));
  setText(row.device, plainLine(port.device || "", 200));
  row.enabled = port.state !== "disabled";
  setText(row.toggle, row.enabled ? "Disable" : "Enable");
  row.toggle.setAttribute("aria-label", `${row.enabled ? "Disable" : "Enable"} console ${name}`);
}

async function togglePort(name, row) {
  const action = row.enabled ? "disable" : "enable";
  if (row.enabled) {
    const ok = await confirmAction({
      title: `Disable ${name}?`,
      text: "Everyone attached to this console is disconnected and nobody can attach until it is enabled "
        + "again. The setting survives a daemon restart.",
      ok: "Disable",
    });
    if (!ok) return;
  }
  try {
    await api(`${portPath(name)}/${action}`, { method: "POST" });
    setText(status, `${name} ${action}d.`);
  } catch (err) {
    setText(status, `Could not ${action} ${name}: ${err.message}.`);
  }
  refresh();
}

async function toggleConsole() {
  const enable = consoleEnabled === false;
  if (!enable) {
    const ok = await confirmAction({
      title: "Disable all consoles?",
      text: "Every console session is closed and no console can be used until access is enabled again.",
      ok: "Disable all",
    });
    if (!ok) return;
  }
  try {
    await api("/console", { method: "POST", body: { enabled: enable } });
    setText(status, enable ? "Console access enabled." : "Console access disabled.");
  } catch (err) {
    setText(status, `Could not change console access: ${err.message}.`);
  }
  refresh();
}
$("btn-global").addEventListener("click", toggleConsole);

async function refreshGlobal() {
  try {
    const data = await api("/console");
    consoleEnabled = Boolean(data && data.enabled);
    const reason = !consoleEnabled && data.reason ? ` (${plainLine(data.reason, 200)})` : "";
    setText($("global-state"), `Console access: ${consoleEnabled ? "enabled" : "disabled"}${reason}.`);
    const button = $("btn-global");
    setText(button, consoleEnabled ? "Disable all consoles" : "Enable all consoles");
    button.hidden = false;
  } catch {
    setText($("global-state"), "Console access: unknown.");
  }
}

function makeGroupTable(name) {
  const table = document.createElement("table");
  table.className = "ports";
  table.dataset.group = name;
  table.createCaption().textContent = `Group ${plainLine(name, 80)}`;
  const head = table.createTHead().insertRow();
  for (const label of COLUMNS) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = label;
    head.appendChild(th);
  }
  const actions = document.createElement("th");
  actions.scope = "col";
  const hidden = document.createElement("span");
  hidden.className = "visually-hidden";
  hidden.textContent = "Actions";
  actions.appendChild(hidden);
  head.appendChild(actions);
  return { table, tbody: table.createTBody() };
}

// The tbody for a group, creating its table (in name order) if needed; "" is the first table.
function bodyFor(group) {
  if (group === "") return tbody;
  let entry = groupTables.get(group);
  if (!entry) {
    entry = makeGroupTable(group);
    groupTables.set(group, entry);
    const container = $("groups");
    const after = [...container.children].find((t) => t.dataset.group > group);
    container.insertBefore(entry.table, after || null);
  }
  return entry.tbody;
}

async function refreshPorts() {
  let data;
  try {
    data = await api("/ports");
  } catch (err) {
    setText(status, `Could not load the console list: ${err.message}.`);
    return;
  }
  if (status.textContent.startsWith("Could not load")) setText(status, "");
  const ports = Array.isArray(data && data.ports) ? data.ports : [];
  const seen = new Set();
  const placed = new Map(); // tbody -> rows placed in it so far
  for (const port of ports) {
    if (!port || typeof port.name !== "string") continue;
    seen.add(port.name);
    let row = rows.get(port.name);
    if (!row) {
      row = makeRow(port.name);
      rows.set(port.name, row);
    }
    updateRow(row, port);
    const body = bodyFor(typeof port.group === "string" ? port.group : "");
    const index = placed.get(body) || 0;
    placed.set(body, index + 1);
    // Keep the daemon's order, but only move a row that is out of place: moving a node blurs the
    // control inside it that has focus.
    const at = body.children[index];
    if (at !== row.tr) body.insertBefore(row.tr, at || null);
  }
  for (const [name, row] of rows) {
    if (!seen.has(name)) {
      row.tr.remove();
      rows.delete(name);
    }
  }
  for (const [name, entry] of groupTables) {
    if (entry.tbody.children.length === 0) {
      entry.table.remove();
      groupTables.delete(name);
    }
  }
  // With groups, the first table holds the consoles without one (and is hidden when there are none).
  const grouped = groupTables.size > 0;
  $("ports").hidden = grouped && tbody.children.length === 0;
  const caption = $("ports-caption");
  caption.classList.toggle("visually-hidden", !grouped);
  setText(caption, grouped ? "Consoles without a group"
    : "Console ports, their state, who is typing and how many are watching");
  $("empty").hidden = rows.size > 0;
  setText($("updated"), `Updated ${new Date().toLocaleTimeString()}.`);
}

async function refresh() {
  await Promise.all([refreshPorts(), refreshGlobal()]);
}

showAccount({ report: (text) => setText(status, text) });
refresh();
setInterval(() => {
  if (document.visibilityState === "visible") refresh();
}, REFRESH_MS);
