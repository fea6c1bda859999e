// Shared helpers for the console list and the console view.
//
// Rule for every file here: data from the daemon or the guest only ever reaches the page through
// textContent, attributes set with setAttribute/properties, or xterm.write -- never through innerHTML,
// so a port name or a line of guest output cannot become markup.

export const API = "/api/v1";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// fetch() wrapper for the JSON API.  Errors come back as {"code", "message"}; anything else (a proxy's HTML
// error page, a dropped connection) becomes an ApiError with a readable message too.
export async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: { Accept: "application/json" }, cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(API + path, init);
  } catch {
    throw new ApiError(0, "unreachable", "serialmuxd is not reachable");
  }
  let data = null;
  if ((response.headers.get("Content-Type") || "").startsWith("application/json")) {
    data = await response.json().catch(() => null);
  }
  if (!response.ok) {
    const message = data && typeof data.message === "string" ? data.message : `HTTP ${response.status}`;
    const code = data && typeof data.code === "string" ? data.code : "http_error";
    throw new ApiError(response.status, code, message);
  }
  return data;
}

export function portPath(name) {
  return `/ports/${encodeURIComponent(name)}`;
}

export function consoleHref(name, { readOnly = false } = {}) {
  return `/console/${encodeURIComponent(name)}` + (readOnly ? "?mode=ro" : "");
}

// One line of daemon text made safe to write into the terminal: control characters (C0, DEL, C1 -- i.e.
// anything that could start an escape sequence) are shown as U+FFFD instead of being interpreted.
export function plainLine(text, max = 500) {
  const s = String(text ?? "").replace(/[\u0000-\u001f\u007f-\u009f]/g, "\ufffd");
  return s.length > max ? s.slice(0, max) + "\u2026" : s;
}

// writer.since may be an ISO 8601 string or a Unix time in seconds; show local clock time.
export function formatSince(since) {
  let date = null;
  if (typeof since === "number" && Number.isFinite(since)) {
    date = new Date(since < 1e12 ? since * 1000 : since);
  } else if (typeof since === "string" && since) {
    date = new Date(since);
  }
  if (!date || Number.isNaN(date.getTime())) return "";
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export function describeWriter(writer) {
  if (!writer || typeof writer !== "object") return "nobody";
  const who = plainLine(writer.who || "someone", 120);
  const since = formatSince(writer.since);
  return since ? `${who} (since ${since})` : who;
}

export function describeState(port) {
  const state = typeof port.state === "string" ? port.state : "unknown";
  return port.state_reason ? `${state}: ${plainLine(port.state_reason, 200)}` : state;
}

// Avoids re-announcing unchanged text in aria-live regions and needless layout work.
export function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

// Asks for confirmation with the page's <dialog id="confirm-dialog"> (a modal dialog traps focus and
// restores it afterwards; window.confirm would do too but cannot be styled or labelled for the action).
export function confirmAction({ title, text, ok }) {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = ok;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}
