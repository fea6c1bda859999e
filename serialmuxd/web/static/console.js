// The console view: an xterm.js terminal attached to one port over the daemon's WebSocket, a command bar
// and a status line.  Protocol: binary frames carry console bytes both ways; text frames carry JSON
// (server: hello / notice / offset / closing; client: resize / break / take_over / read_only / key / sysrq).
import {
  api, ApiError, confirmAction, describeState, describeWriter, plainLine, portPath, setText,
} from "./common.js";

const $ = (id) => document.getElementById(id);

// xterm.js and the fit add-on are UMD bundles loaded by the classic scripts in console.html.  They are
// fetched at install time; say so plainly if a source checkout was never built.
if (typeof globalThis.Terminal !== "function" || !globalThis.FitAddon) {
  $("st-conn").textContent = "The terminal (xterm.js) is not installed on the server: run "
    + "`pip install -e .` (needs npm) and restart serialmuxd.";
  throw new Error("xterm.js missing");
}
const { Terminal } = globalThis;
const { FitAddon } = globalThis.FitAddon;

const ui = {
  portName: $("port-name"), write: $("btn-write"), brk: $("btn-break"),
  sysrq: $("btn-sysrq"), fkey: $("fkey"), sendKey: $("btn-key"), keyProfile: $("key-profile"),
  hvGroup: $("hv-group"), download: $("download"), reconnect: $("btn-reconnect"), srMode: $("sr-mode"),
  stConn: $("st-conn"), stPort: $("st-port"), stWriter: $("st-writer"), stViewers: $("st-viewers"),
  stNote: $("st-note"), termEl: $("terminal"), sysrqDialog: $("sysrq-dialog"), sysrqKey: $("sysrq-key"),
};
const HV_ACTIONS = {
  nmi: {
    button: $("btn-nmi"), ok: "Send NMI", done: "NMI sent",
    text: "Send a non-maskable interrupt to the machine behind this console? What happens next depends on "
      + "the guest: Linux may panic or log it, Windows can be set up to crash and write a memory dump.",
  },
  reset: {
    button: $("btn-reset"), ok: "Reset", done: "Reset requested",
    text: "Hard-reset the machine behind this console? Like pressing its reset button: the guest is not "
      + "shut down and unsaved data is lost.",
  },
  restart: {
    button: $("btn-restart"), ok: "Restart", done: "Restart requested",
    text: "Restart the machine behind this console through its hypervisor? Unsaved data in the guest may "
      + "be lost.",
  },
};

// Close codes from the daemon; "retry: false" ones need a person to decide (Reconnect / Take over).
const CLOSE_REASONS = {
  1001: { text: "serialmuxd is shutting down", retry: true },
  1006: { text: "the connection was lost", retry: true },
  1009: { text: "a message was too big", retry: true },
  4000: { text: "another user took over this console", retry: false },
  4001: { text: "console access is disabled", retry: false },
  4002: { text: "the daemon rejected a message from this page", retry: true },
  4003: { text: "this page fell behind the console output", retry: true },
  4004: { text: "there is no console port with this name", retry: false },
  4005: { text: "access to this console was denied", retry: false },
};
// Notices whose "offset" field is the ring offset of the next console byte on this socket.
const OFFSET_NOTICES = new Set(["replay_start", "replay_end", "missed"]);
// Shown in the status line only, never written into the terminal.
const QUIET_NOTICES = new Set(["replay_end", "write_granted"]);
const ROLE_NOTICES = new Set(["write_granted", "read_only"]);
const WRITER_NOTICES = new Set(["write_granted", "took_over"]);
const VIEWER_NOTICES = new Set(["evicted", "demoted", "refused", "read_only"]);
// Notices after which the port's writer, viewer count or state are worth fetching again.
const REFRESH_NOTICES = new Set([
  "attached", "write_granted", "took_over", "evicted", "demoted", "refused", "offline", "online",
]);
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30_000;
const PORT_POLL_MS = 10_000;
const REMINDER_MS = 5_000;
const SR_KEY = "serialmuxd.screenReaderMode";

// ---------------------------------------------------------------------------------------------------
// Which port: /console/{name}, name percent-encoded by the index page.

let portName = null;
try {
  const match = /^\/console\/([^/]+)\/?$/.exec(location.pathname);
  if (match) portName = decodeURIComponent(match[1]);
} catch {
  portName = null; // malformed %-escape
}
const apiPort = portName === null ? null : portPath(portName);
const wantReadOnly = new URLSearchParams(location.search).get("mode") === "ro";

// ---------------------------------------------------------------------------------------------------
// Session state.

const conn = {
  ws: null,
  mode: null, // mode of the open socket: "rw" | "ro"
  role: null, // "writer" | "viewer" | null (not attached)
  wantMode: wantReadOnly ? "ro" : "rw",
  wantTakeOver: false, // take over as soon as the next socket says hello
  offset: null, // ring offset of the next byte we expect; reconnects resume there with from=
  requestedFrom: null, // the from= of the current socket
  everOpened: false,
  retries: 0,
  retryTimer: null,
  closingText: "", // the last "closing"/"evicted" notice: the daemon's own words for why it ends
  lastReminder: 0,
  pendingClick: null, // "ro" | "rw": the role change the user just asked for, until the daemon answers
  noteIsReminder: false, // the status note is a "not sent" reminder, stale once we can write
};
const encoder = new TextEncoder();

// ---------------------------------------------------------------------------------------------------
// Terminal.

let screenReader = false;
try {
  screenReader = localStorage.getItem(SR_KEY) === "1";
} catch {
  // storage disabled: the checkbox still works for this page
}

const term = new Terminal({
  cursorBlink: !matchMedia("(prefers-reduced-motion: reduce)").matches,
  scrollback: 10_000,
  screenReaderMode: screenReader,
  fontFamily: 'ui-monospace, "DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas, monospace',
  fontSize: 14,
  // OSC 8 hyperlinks from the guest: never navigate (the default asks confirm() and opens a window).
  // No web-links add-on is loaded, so plain URLs in the output are not links either.
  linkHandler: { activate() {}, allowNonHttpProtocols: false },
  // No clipboard add-on and no OSC 52 handler: the guest cannot read or write the user's clipboard.
});
const fit = new FitAddon();
term.loadAddon(fit);
term.open(ui.termEl);
ui.srMode.checked = screenReader;

// Port text shown in the terminal itself is dim and on a line of its own, so it does not read as guest
// output; plainLine() keeps daemon text from smuggling escape sequences into the terminal.
function termNote(text) {
  const lead = term.buffer.active.cursorX > 0 ? "\r\n" : "";
  term.write(`${lead}\x1b[2m[serialmuxd] ${plainLine(text)}\x1b[22m\r\n`);
}

function say(text, { reminder = false } = {}) {
  setText(ui.stNote, text);
  conn.noteIsReminder = reminder;
}

function fitTerminal() {
  try {
    fit.fit();
  } catch {
    // the container is hidden or has no size yet; the next resize fixes it
  }
}
let fitPending = false;
new ResizeObserver(() => {
  if (fitPending) return;
  fitPending = true;
  requestAnimationFrame(() => {
    fitPending = false;
    fitTerminal();
  });
}).observe(ui.termEl);
term.onResize(({ cols, rows }) => sendJson({ type: "resize", cols, rows }));

// ---------------------------------------------------------------------------------------------------
// Keyboard input.  Typing is only sent while we hold the write lease: the daemon would refuse it anyway,
// and a viewer's terminal would otherwise also answer the guest's terminal queries (DA, DSR) for it.

function canWrite(action) {
  if (conn.ws && conn.ws.readyState === WebSocket.OPEN && conn.role === "writer") return true;
  const now = Date.now();
  if (action || now - conn.lastReminder > REMINDER_MS) {
    conn.lastReminder = now;
    const what = action ? `${action} not sent` : "Typing is not sent";
    const connected = conn.ws && conn.ws.readyState === WebSocket.OPEN;
    const why = connected ? "you are read-only. Use Take over to type." : "not connected.";
    say(`${what}: ${why}`, { reminder: true });
  }
  return false;
}

term.onData((data) => {
  if (canWrite()) conn.ws.send(encoder.encode(data));
});
// onBinary: strings whose characters are single bytes (mouse reports in X10 mode), not UTF-8 text.
term.onBinary((data) => {
  if (!canWrite()) return;
  const bytes = new Uint8Array(data.length);
  for (let i = 0; i < data.length; i += 1) bytes[i] = data.charCodeAt(i) & 0xff;
  conn.ws.send(bytes);
});

function isShortcut(ev, letter) {
  return ev.ctrlKey && ev.shiftKey && !ev.altKey && !ev.metaKey
    && (ev.key.toLowerCase() === letter || ev.code === `Key${letter.toUpperCase()}`);
}

term.attachCustomKeyEventHandler((ev) => {
  if (ev.ctrlKey && ev.key === "F6") return false; // handled by the document listener below
  if (ev.type !== "keydown") return true;
  if (isShortcut(ev, "c")) {
    ev.preventDefault(); // Chromium opens the element inspector on Ctrl+Shift+C
    copySelection();
    return false;
  }
  if (isShortcut(ev, "v")) {
    pasteShortcut();
    return false; // xterm would otherwise send ^V
  }
  return true;
});

// Ctrl+F6 (as in the Azure portal) toggles focus between the terminal, which keeps Tab for the guest,
// and the command bar.  Capture phase: it runs before xterm sees the key.
document.addEventListener("keydown", (ev) => {
  if (!(ev.ctrlKey && ev.key === "F6")) return;
  ev.preventDefault();
  if (ui.termEl.contains(document.activeElement)) ui.write.focus();
  else term.focus();
}, { capture: true });

async function copySelection() {
  const text = term.getSelection();
  if (!text) {
    say("Nothing selected to copy.");
    return;
  }
  try {
    await navigator.clipboard.writeText(text); // undefined outside secure contexts: falls to catch
    say(`Copied ${text.length} characters.`);
  } catch {
    // No Clipboard API or permission: xterm's own "copy" handler fills the clipboard from its selection.
    const ok = document.execCommand("copy");
    say(ok ? `Copied ${text.length} characters.`
      : "Copy blocked by the browser: use its Copy menu item (right-click) instead.");
  }
}

// Paste: prefer the browser's native paste (no permission prompt; Chromium and Firefox paste on
// Ctrl+Shift+V and xterm handles the event).  If no paste event follows, ask the Clipboard API.
function pasteShortcut() {
  let native = false;
  const seen = () => { native = true; };
  ui.termEl.addEventListener("paste", seen, { capture: true, once: true });
  setTimeout(async () => {
    ui.termEl.removeEventListener("paste", seen, { capture: true });
    if (native) return;
    try {
      const text = await navigator.clipboard.readText();
      if (text) term.paste(text); // same path as typing: bracketed paste, read-only check
    } catch {
      say("Paste blocked by the browser: allow clipboard access for this site, or use its Paste menu item.");
    }
  }, 100);
}

// ---------------------------------------------------------------------------------------------------
// WebSocket.

function sendJson(message) {
  if (conn.ws && conn.ws.readyState === WebSocket.OPEN) {
    conn.ws.send(JSON.stringify(message));
    return true;
  }
  return false;
}

function connect() {
  clearTimeout(conn.retryTimer);
  conn.retryTimer = null;
  if (conn.ws) {
    const old = conn.ws;
    conn.ws = null; // its close event is ignored below: it is no longer current
    old.close(1000, "reconnecting");
  }
  const params = new URLSearchParams({ mode: conn.wantMode });
  conn.requestedFrom = conn.offset;
  if (conn.offset !== null) params.set("from", String(conn.offset));
  const url = new URL(`/api/v1${apiPort}/ws?${params}`, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  conn.ws = ws;
  conn.everOpened = false;
  conn.closingText = "";
  setRole(null);
  setText(ui.stConn, "Connecting\u2026");

  ws.addEventListener("open", () => {
    if (ws !== conn.ws) return;
    conn.everOpened = true;
  });
  ws.addEventListener("message", (ev) => {
    if (ws !== conn.ws) return;
    if (typeof ev.data !== "string") {
      const bytes = new Uint8Array(ev.data);
      term.write(bytes);
      if (conn.offset !== null) conn.offset += bytes.length;
      return;
    }
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return; // not ours to fix; the daemon only sends JSON text frames
    }
    if (msg && typeof msg === "object") onControl(msg);
  });
  ws.addEventListener("close", (ev) => {
    if (ws !== conn.ws) return;
    onClosed(ev);
  });
}

function onControl(msg) {
  switch (msg.type) {
    case "hello":
      conn.mode = msg.mode === "ro" ? "ro" : "rw";
      // A resumed socket continues at our from=; a new one at the offset in hello (replay and missed
      // notices then move it explicitly).
      if (conn.requestedFrom !== null) conn.offset = conn.requestedFrom;
      else if (Number.isSafeInteger(msg.offset)) conn.offset = msg.offset;
      conn.retries = 0;
      setText(ui.stConn, "Connected.");
      if (msg.role) serverRole(msg.role);
      sendJson({ type: "resize", cols: term.cols, rows: term.rows });
      refreshPort();
      break;
    case "offset":
      if (Number.isSafeInteger(msg.offset)) conn.offset = msg.offset;
      break;
    case "notice":
      onNotice(msg);
      break;
    case "closing": // the daemon's reason, just before it closes the socket with a close code
      conn.closingText = plainLine(msg.reason || "", 200);
      break;
    default:
      break; // newer daemon, older page: ignore what we do not know
  }
}

function onNotice(msg) {
  const kind = String(msg.kind || "");
  const text = plainLine(msg.text || "");
  // Notes in the terminal interrupt the guest's current line (often its prompt), so routine ones --
  // and the answer to the user's own Read-only / Take over click -- only go to the status line.
  const answersClick = (conn.pendingClick === "ro" && kind === "read_only")
    || (conn.pendingClick === "rw" && WRITER_NOTICES.has(kind));
  if (answersClick) conn.pendingClick = null;
  if (text) {
    if (!QUIET_NOTICES.has(kind) && !answersClick) termNote(text);
    // The role itself is always shown by the connection part of the status line.
    if (!ROLE_NOTICES.has(kind)) say(text);
  }
  if (OFFSET_NOTICES.has(kind) && Number.isSafeInteger(msg.offset)) conn.offset = msg.offset;
  if (msg.role === "writer" || msg.role === "viewer") serverRole(msg.role);
  else if (WRITER_NOTICES.has(kind)) serverRole("writer");
  else if (VIEWER_NOTICES.has(kind)) serverRole("viewer");
  if (kind === "closing" || kind === "evicted") conn.closingText = text;
  if (REFRESH_NOTICES.has(kind)) refreshPortSoon();
}

function onClosed(ev) {
  conn.ws = null;
  conn.mode = null;
  setRole(null);
  const known = CLOSE_REASONS[ev.code];
  let why;
  if (known) why = known.text;
  else if (ev.reason) why = plainLine(ev.reason, 200);
  else why = `the connection closed (code ${ev.code})`;
  if (!conn.everOpened && ev.code === 1006) why = "could not connect to serialmuxd";
  // The daemon's own words (who took over, why it was disabled) go into the terminal's record; the
  // status line keeps the short form and the last notice.
  // Failed attempts while the daemon is down only update the status line.
  const detail = conn.closingText && conn.closingText.toLowerCase() !== why.toLowerCase()
    ? ` (${conn.closingText})` : "";
  if (conn.everOpened) termNote(`Disconnected: ${why}${detail}.`);
  if (known && !known.retry) {
    const next = ev.code === 4000 ? "Use Take over or Reconnect." : "Use Reconnect to try again.";
    setText(ui.stConn, `Disconnected: ${why}. ${next}`);
    refreshPort();
    return;
  }
  scheduleReconnect(why);
}

// Exponential backoff with jitter, so that many pages do not reconnect in lockstep after a restart.
function scheduleReconnect(why) {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** conn.retries);
  const delay = Math.round(base * (0.75 + Math.random() * 0.5));
  conn.retries += 1;
  setText(ui.stConn, `Disconnected: ${why}. Reconnecting in ${Math.ceil(delay / 1000)} s\u2026`);
  conn.retryTimer = setTimeout(resumeConnection, delay);
}

// Before resuming at our offset, check it against the port's ring: if it was overwritten meanwhile (or
// the daemon restarted and its offsets went back), say so instead of failing the handshake forever.
async function resumeConnection() {
  conn.retryTimer = null;
  const port = await refreshPort();
  if (port === "gone") return;
  if (port && port.state === "disabled") {
    setText(ui.stConn, "Disconnected: console access is disabled. Use Reconnect once it is enabled.");
    return;
  }
  if (port && conn.offset !== null && port.scrollback) {
    const { start, end } = port.scrollback;
    if (Number.isSafeInteger(start) && conn.offset < start) {
      termNote(`${start - conn.offset} bytes of output were lost while disconnected.`);
      conn.offset = start;
    } else if (Number.isSafeInteger(end) && conn.offset > end) {
      termNote("serialmuxd restarted; output from before the restart may repeat or be missing.");
      conn.offset = null;
    }
  }
  connect();
}

function reconnectNow() {
  conn.retries = 0;
  connect();
}

// ---------------------------------------------------------------------------------------------------
// Role and port status.

function setRole(role) {
  conn.role = role === "writer" || role === "viewer" ? role : null;
  const writer = conn.role === "writer";
  if (writer && conn.noteIsReminder) say("");
  setText(ui.write, writer ? "Read-only" : "Take over");
  ui.write.title = writer
    ? "Stop typing into the console and only watch it"
    : "Type into the console (the current writer becomes a viewer or is disconnected)";
  if (conn.role === "writer") setText(ui.stConn, "Connected: you are typing (writer).");
  else if (conn.role === "viewer") setText(ui.stConn, "Connected read-only (viewer).");
  document.body.dataset.role = conn.role || "none";
}

// The role the daemon reports.  A pending "Take over" (from a page that was not connected read-write)
// is sent once the daemon has placed the new session as a viewer.
function serverRole(role) {
  setRole(role);
  if (!conn.wantTakeOver || conn.role === null) return;
  conn.wantTakeOver = false;
  if (conn.role === "viewer" && conn.mode === "rw") sendJson({ type: "take_over" });
}

let refreshTimer = null;
function refreshPortSoon() {
  if (refreshTimer === null) {
    refreshTimer = setTimeout(() => {
      refreshTimer = null;
      refreshPort();
    }, 200);
  }
}

// Returns the PORT object, "gone" for an unknown port, or null if the daemon could not be asked.
async function refreshPort() {
  let port;
  try {
    port = await api(apiPort);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      setText(ui.stPort, "Unknown console port.");
      setText(ui.stConn, "Not connected.");
      return "gone";
    }
    setText(ui.stPort, `Port status unavailable: ${err.message}.`);
    return null;
  }
  if (!port || typeof port !== "object") return null;
  setText(ui.stPort, `Port ${describeState(port)}.`);
  setText(ui.stWriter, `Writer: ${describeWriter(port.writer)}.`);
  const viewers = Number(port.viewers) || 0;
  setText(ui.stViewers, `${viewers} ${viewers === 1 ? "viewer" : "viewers"}.`);
  setText(ui.keyProfile, port.key_profile ? `(${port.key_profile})` : "");
  const actions = port.hypervisor && Array.isArray(port.hypervisor.actions) ? port.hypervisor.actions : [];
  for (const [name, action] of Object.entries(HV_ACTIONS)) action.button.hidden = !actions.includes(name);
  ui.hvGroup.hidden = actions.length === 0;
  return port;
}

// ---------------------------------------------------------------------------------------------------
// Command bar.

ui.write.addEventListener("click", () => {
  if (conn.role === "writer") {
    if (sendJson({ type: "read_only" })) conn.pendingClick = "ro";
    setRole("viewer"); // stop sending keystrokes now; the daemon confirms with a notice
    return;
  }
  if (conn.ws && conn.ws.readyState === WebSocket.OPEN && conn.mode === "rw") {
    if (sendJson({ type: "take_over" })) conn.pendingClick = "rw";
    return;
  }
  // Not connected, or connected with mode=ro (which cannot write): reconnect read-write, then take over.
  conn.wantMode = "rw";
  conn.wantTakeOver = true;
  reconnectNow();
});

ui.brk.addEventListener("click", () => {
  if (canWrite("Break") && sendJson({ type: "break" })) say("Break sent.");
});

ui.sendKey.addEventListener("click", () => {
  const key = ui.fkey.value;
  if (canWrite(key) && sendJson({ type: "key", key })) say(`${key} sent.`);
});

ui.sysrq.addEventListener("click", () => {
  ui.sysrqKey.value = "";
  ui.sysrqDialog.returnValue = "";
  ui.sysrqDialog.showModal();
});
ui.sysrqKey.addEventListener("input", () => {
  ui.sysrqKey.value = ui.sysrqKey.value.toLowerCase();
});
ui.sysrqDialog.addEventListener("close", () => {
  if (ui.sysrqDialog.returnValue !== "send") return;
  const key = ui.sysrqKey.value;
  if (/^[0-9a-z]$/.test(key) && canWrite("SysRq") && sendJson({ type: "sysrq", key })) {
    say(`SysRq ${key} sent.`);
  }
});

for (const [name, action] of Object.entries(HV_ACTIONS)) {
  action.button.addEventListener("click", async () => {
    const ok = await confirmAction({ title: `${action.ok}: ${portName}`, text: action.text, ok: action.ok });
    if (!ok) return;
    try {
      await api(`${apiPort}/${name}`, { method: "POST" });
      say(`${action.done}.`);
    } catch (err) {
      say(`${action.ok} failed: ${err.message}.`);
    }
  });
}

ui.reconnect.addEventListener("click", () => {
  say("");
  reconnectNow();
});

ui.srMode.addEventListener("change", () => {
  term.options.screenReaderMode = ui.srMode.checked;
  try {
    localStorage.setItem(SR_KEY, ui.srMode.checked ? "1" : "0");
  } catch {
    // not remembered, still applied
  }
});

// ---------------------------------------------------------------------------------------------------
// Start.

if (portName === null) {
  setText(ui.stConn, "This address does not name a console port.");
} else {
  document.title = `${portName} - serialmuxd console`;
  ui.portName.textContent = portName;
  ui.termEl.closest("main").setAttribute("aria-label", `Terminal of console ${portName}`);
  // xterm's hidden textarea is what holds keyboard focus; tell screen readers about the shortcuts there.
  term.textarea?.setAttribute("aria-describedby", "hint");
  ui.download.href = `/api/v1${apiPort}/scrollback?format=raw&download=1`;
  fitTerminal();
  connect();
  setInterval(() => {
    if (document.visibilityState === "visible") refreshPort();
  }, PORT_POLL_MS);
  term.focus();
}
