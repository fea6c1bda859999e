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
//
// Sign-in: every request says it comes from this page (X-Requested-With), so a 401 carries no Basic
// challenge and the browser shows no password dialog of its own; on a 401 the page goes to /signin
// instead (redirect: false for the sign-in page itself).  Requests that change something send the signed-in
// session's CSRF token (from GET /api/v1/session); a 403 asking for it is retried once with a fresh one
// (the user may have signed in again in another tab, which replaced the session).
const STATE_CHANGING = new Set(["POST", "PUT", "PATCH", "DELETE"]);

export async function api(path, { method = "GET", body, redirect = true, csrf = true, retried = false } = {}) {
  const init = {
    method,
    headers: { Accept: "application/json", "X-Requested-With": "serialmuxd" },
    cache: "no-store",
    credentials: "same-origin",
  };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (csrf && STATE_CHANGING.has(method)) {
    const account = await currentAccount().catch(() => null);
    if (account && typeof account.csrf === "string") init.headers["X-CSRF-Token"] = account.csrf;
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
    if (response.status === 403 && data && data.csrf_required && csrf && !retried) {
      await currentAccount({ refresh: true }).catch(() => null);
      return api(path, { method, body, redirect, csrf, retried: true });
    }
    if (response.status === 401 && redirect) goToSignIn();
    throw new ApiError(response.status, code, message);
  }
  return data;
}

// ---------------------------------------------------------------------------------------------------
// Who is signed in.  GET /api/v1/session answers {auth, user, method, csrf?}; asked once per page load
// (and again after a CSRF refusal).  auth === false: this daemon asks for no credentials at all.

let accountPromise = null;

export function currentAccount({ refresh = false } = {}) {
  if (accountPromise === null || refresh) {
    const asking = api("/session", { csrf: false });
    accountPromise = asking;
    asking.catch(() => {
      if (accountPromise === asking) accountPromise = null; // ask again next time
    });
  }
  return accountPromise;
}

// Where to come back to after signing in: this page.
export function signInHref() {
  return `/signin?${new URLSearchParams({ next: location.pathname + location.search })}`;
}

let leaving = false;
export function goToSignIn() {
  if (leaving || location.pathname === "/signin") return;
  leaving = true;
  location.assign(signInHref());
}

// The ?next= of the sign-in page, if it is a path on this server; "/" otherwise.  "//host" and "/\host"
// are read by browsers as another host, and anything with a scheme would leave this origin.
export function safeNext(raw) {
  if (typeof raw !== "string" || !raw.startsWith("/") || raw.startsWith("//") || raw.startsWith("/\\")) {
    return "/";
  }
  try {
    const url = new URL(raw, location.origin);
    if (url.origin !== location.origin || url.pathname === "/signin") return "/";
    return url.pathname + url.search;
  } catch {
    return "/";
  }
}

// The account part of a page's top bar: "Signed in as NAME" and a Sign out button, for cookie sessions
// (a browser that sent Basic credentials or a client certificate cannot be signed out by the page); a
// Sign in link where [auth] lets anonymous visitors in.
// `report(text)` shows a failure in the page's own live status region.
export async function showAccount({ report }) {
  const who = document.getElementById("whoami");
  const button = document.getElementById("btn-signout");
  let account;
  try {
    account = await currentAccount();
  } catch {
    return; // 401: on the way to the sign-in page already; otherwise the page's own requests say why
  }
  if (!account || !account.auth) return; // no [auth]: nobody signs in or out
  setText(who, account.user ? `Signed in as ${plainLine(account.user, 80)}` : "Not signed in");
  if (!account.user) {
    // [auth] anonymous: the page works without signing in, and signing in gives more.
    const link = document.getElementById("signin-link");
    link.href = signInHref();
    link.hidden = false;
    return;
  }
  if (account.method !== "session") return;
  button.hidden = false;
  button.addEventListener("click", async () => {
    try {
      await api("/session", { method: "DELETE", redirect: false });
    } catch (err) {
      if (err.status !== 401) {
        report(`Could not sign out: ${err.message}.`);
        return;
      }
    }
    leaving = true;
    location.assign("/signin");
  });
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
