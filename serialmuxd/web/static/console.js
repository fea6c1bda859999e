// The console view: an xterm.js terminal attached to one port over the daemon's WebSocket, a command bar
// and a status line.  Protocol: binary frames carry console bytes both ways; text frames carry JSON
// (server: hello / notice / offset / closing; client: resize / break / take_over / read_only / key / sysrq).
import {
  api, ApiError, confirmAction, currentAccount, describeState, describeWriter, plainLine, portPath, setText,
  showAccount,
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
  sysrqForm: $("sysrq-form"), sysrqSend: $("sysrq-send"),
  askBar: $("ask-bar"), askText: $("ask-text"), askYes: $("btn-ask-yes"), askNo: $("btn-ask-no"),
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
// 4002 is not retried: the daemon rejects the same message again, and retrying turned that into a reconnect
// every half second for as long as the page stayed open.
const CLOSE_REASONS = {
  1001: { text: "serialmuxd is shutting down", retry: true },
  1006: { text: "the connection was lost", retry: true },
  1009: { text: "a message was too big", retry: true },
  4000: { text: "another user took over this console", retry: false },
  4001: { text: "console access is disabled", retry: false },
  4002: { text: "the daemon rejected a message from this page", retry: false },
  4003: { text: "this page fell behind the console output", retry: true },
  4004: { text: "there is no console port with this name", retry: false },
  4005: { text: "access to this console was denied", retry: false },
  4006: { text: "this console has its maximum number of sessions", retry: false },
};
// Notices whose "offset" field is the ring offset of the next console byte on this socket.
const OFFSET_NOTICES = new Set(["replay_start", "replay_end", "missed"]);
// Shown in the status line only, never written into the terminal.
const QUIET_NOTICES = new Set(["replay_end", "write_granted"]);
const ROLE_NOTICES = new Set(["write_granted", "read_only"]);
const WRITER_NOTICES = new Set(["write_granted", "took_over"]);
const VIEWER_NOTICES = new Set(["evicted", "demoted", "refused", "read_only"]);
// Notices after which a pending "asked" question is no longer open.
const ASK_SETTLED = new Set(["demoted", "evicted", "read_only"]);
// Notices after which the port's writer, viewer count or state are worth fetching again.
// A notice's "hint" (what the user can do about it) in this page's words: the daemon's text never says
// how, since telnet and serialmux users do it with keys.  Unknown hints (a newer daemon) add nothing.
const HINT_WORDS = new Map([["take_over", "Take over lets you type"]]);
const REFRESH_NOTICES = new Set([
  "attached", "write_granted", "took_over", "evicted", "demoted", "refused", "offline", "online",
]);
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30_000;
// The backoff starts again from BACKOFF_MIN_MS only once a socket has stayed open this long: a socket
// the daemon accepts and then closes at once (hello, then 4003 or 1009) must still back off.
const STABLE_MS = 10_000;
// The daemon closes the socket with 4002 on a resize outside 1..1000 (proto/wsmsg.py).
const MAX_WINDOW_DIMENSION = 1000;
// Input frames stay well below the daemon's http.ws_max_message_bytes (default 64 KiB): a bigger frame
// (a large paste) makes it close the whole session with 1009.
const INPUT_CHUNK_BYTES = 16 * 1024;
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
  stableTimer: null, // resets `retries` once the current socket has been open for STABLE_MS
  connNote: "", // why the current socket is a fresh attach (after 4003), shown with the connection state
  closingText: "", // the last "closing"/"evicted" notice: the daemon's own words for why it ends
  lastReminder: 0,
  pendingClick: null, // "ro" | "rw": the role change the user just asked for, until the daemon answers
  noteIsReminder: false, // the status note is a "not sent" reminder, stale once we can write
  attempt: 0, // which connect() is current: one that awaited its ticket while a newer one began gives up
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
term.onResize(() => sendSize());

function clampDimension(n) {
  return Math.min(MAX_WINDOW_DIMENSION, Math.max(1, Math.trunc(n) || 1));
}

// Clamped: a window the daemon would refuse (4002, not retried) must not cost the session; a terminal
// wider than 1000 columns simply tells the guest 1000.
function sendSize() {
  return sendJson({ type: "resize", cols: clampDimension(term.cols), rows: clampDimension(term.rows) });
}

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

// Old output parsed again.  Replayed scrollback (between the replay_start and replay_end notices) and
// the catch-up of a from= resume go through xterm's parser like live output, so terminal queries in them
// (DSR "ESC[6n", DA "ESC[c", ...) make xterm answer through onData -- answers to questions the guest
// asked long ago, which would arrive in the guest as typed input (in a shell: a garbage command line).
// While such bytes are not yet parsed, onData is therefore not sent.  xterm cannot tell its own answers
// from the user's keys, so real keystrokes (and pastes) in that short window are dropped too; it lasts as
// long as xterm needs to parse at most the replay window or the catch-up, normally well under a second.
const quiet = {
  active: false,
  generation: 0, // which window an end callback belongs to; a newer window is not ended by an older one
  catchUpTo: null, // from= resume: the stream offset (hello's) at which the catch-up ends
};

function startQuiet() {
  quiet.generation += 1;
  quiet.active = true;
}

// xterm parses writes in order and calls a write's callback once that write is parsed, so the callback of
// an empty write queued now runs after every byte written before it has been parsed (and answered).
function endQuietAfterParsing() {
  const { generation } = quiet;
  term.write("", () => {
    if (quiet.generation === generation) quiet.active = false;
  });
}

// The socket is gone (or replaced) before its replay or catch-up ended: the window ends once the bytes
// already received are parsed, unless a new socket opens a new window first.
function abandonQuiet() {
  quiet.catchUpTo = null;
  if (quiet.active) endQuietAfterParsing();
}

// For a from= resume: the catch-up is over once our offset reaches the stream end hello announced.
function checkCatchUp() {
  if (quiet.catchUpTo !== null && conn.offset !== null && conn.offset >= quiet.catchUpTo) {
    quiet.catchUpTo = null;
    endQuietAfterParsing();
  }
}

// In frames of at most INPUT_CHUNK_BYTES; the daemon joins them (the stream has no message boundaries,
// so splitting inside a UTF-8 character or an escape sequence is harmless).
function sendInput(bytes) {
  for (let i = 0; i < bytes.length; i += INPUT_CHUNK_BYTES) {
    conn.ws.send(bytes.subarray(i, i + INPUT_CHUNK_BYTES));
  }
}

term.onData((data) => {
  if (quiet.active) return; // see "quiet" above: possibly xterm answering replayed queries
  if (canWrite()) sendInput(encoder.encode(data));
});
// onBinary: strings whose characters are single bytes (mouse reports in X10 mode), not UTF-8 text.
term.onBinary((data) => {
  if (!canWrite()) return;
  const bytes = new Uint8Array(data.length);
  for (let i = 0; i < data.length; i += 1) bytes[i] = data.charCodeAt(i) & 0xff;
  sendInput(bytes);
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

// With [auth] every upgrade carries a single-use console ticket (?ticket=, valid 60 s, for this console
// and mode), asked for just before: the cookie would do for this same-origin page too, but a ticket is the
// one mechanism that also works through proxies and for other clients, and nothing else secret is ever
// put in a URL.  Without [auth] no ticket is needed (and none is asked for).
async function consoleTicket(mode) {
  const account = await currentAccount();
  if (!account || !account.auth) return null;
  const answer = await api(`${apiPort}/ticket`, { method: "POST", body: { mode } });
  if (!answer || typeof answer.ticket !== "string") {
    throw new ApiError(0, "bad_answer", "no ticket in the answer");
  }
  return answer.ticket;
}

function ticketFailed(err) {
  if (err instanceof ApiError && err.status === 401) {
    setText(ui.stConn, "Not signed in: opening the sign-in page\u2026"); // api() is on its way there
    return;
  }
  if (err instanceof ApiError && err.status === 404) {
    setText(ui.stPort, "Unknown console port.");
    setText(ui.stConn, "Not connected.");
    return;
  }
  scheduleReconnect(`could not get a console ticket (${plainLine(err.message, 200)})`);
}

async function connect() {
  clearTimeout(conn.retryTimer);
  conn.retryTimer = null;
  clearTimeout(conn.stableTimer);
  conn.stableTimer = null;
  if (conn.offset !== null) conn.connNote = ""; // a resume: no longer the fresh attach after 4003
  abandonQuiet();
  if (conn.ws) {
    const old = conn.ws;
    conn.ws = null; // its close event is ignored below: it is no longer current
    old.close(1000, "reconnecting");
  }
  conn.attempt += 1;
  const attempt = conn.attempt;
  const params = new URLSearchParams({ mode: conn.wantMode });
  conn.requestedFrom = conn.offset;
  if (conn.offset !== null) params.set("from", String(conn.offset));
  conn.everOpened = false;
  conn.closingText = "";
  setRole(null);
  setText(ui.stConn, "Connecting\u2026");
  let ticket;
  try {
    ticket = await consoleTicket(conn.wantMode);
  } catch (err) {
    if (attempt === conn.attempt) ticketFailed(err);
    return;
  }
  if (attempt !== conn.attempt) return; // a newer connect() (Reconnect, Take over) has taken over
  if (ticket !== null) params.set("ticket", ticket);
  const url = new URL(`/api/v1${apiPort}/ws?${params}`, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  conn.ws = ws;

  ws.addEventListener("open", () => {
    if (ws !== conn.ws) return;
    conn.everOpened = true;
    conn.stableTimer = setTimeout(() => {
      if (ws === conn.ws) conn.retries = 0;
    }, STABLE_MS);
  });
  ws.addEventListener("message", (ev) => {
    if (ws !== conn.ws) return;
    if (typeof ev.data !== "string") {
      const bytes = new Uint8Array(ev.data);
      term.write(bytes);
      if (conn.offset !== null) conn.offset += bytes.length;
      checkCatchUp();
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
      // A resume gets the bytes from our from= up to hello's offset as a catch-up, without replay
      // notices: they are old output too (see "quiet").
      if (conn.requestedFrom !== null && Number.isSafeInteger(msg.offset)
        && msg.offset > conn.requestedFrom) {
        startQuiet();
        quiet.catchUpTo = msg.offset;
      }
      // `retries` is not reset here but by conn.stableTimer: hello alone does not show that the
      // daemon will keep this socket.
      setText(ui.stConn, `Connected.${conn.connNote}`);
      if (msg.role) serverRole(msg.role);
      sendSize();
      refreshPort();
      break;
    case "offset":
      if (Number.isSafeInteger(msg.offset)) conn.offset = msg.offset;
      checkCatchUp();
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
  const hint = HINT_WORDS.get(String(msg.hint || ""));
  const text = plainLine(msg.text || "") + (msg.text && hint ? ` (${hint})` : "");
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
  if (kind === "replay_start") {
    // Before the offset update below: the replayed bytes follow this notice.
    quiet.catchUpTo = null;
    startQuiet();
  }
  if (OFFSET_NOTICES.has(kind) && Number.isSafeInteger(msg.offset)) conn.offset = msg.offset;
  if (kind === "replay_end") endQuietAfterParsing();
  else checkCatchUp(); // a "missed" notice may move the offset past the catch-up's end
  if (msg.role === "writer" || msg.role === "viewer") serverRole(msg.role);
  else if (WRITER_NOTICES.has(kind)) serverRole("writer");
  else if (VIEWER_NOTICES.has(kind)) serverRole("viewer");
  // The daemon ignores resizes from viewers, so the size sent while we were one never reached the PTY,
  // which still has the previous writer's size: send ours now that we are the writer.
  if (WRITER_NOTICES.has(kind)) sendSize();
  if (kind === "closing" || kind === "evicted") conn.closingText = text;
  if (REFRESH_NOTICES.has(kind)) refreshPortSoon();
  // Takeover policy "ask": someone wants to write; answer with the bar's buttons (silence hands over).
  if (kind === "asked") showAsk(text);
  else if (ASK_SETTLED.has(kind) || msg.ask) showAsk(null);
}

function showAsk(text) {
  ui.askBar.hidden = text === null;
  setText(ui.askText, text || "");
}

function answerAsk(accept) {
  sendJson({ type: "answer_takeover", accept });
  showAsk(null);
  term.focus();
}
ui.askYes.addEventListener("click", () => answerAsk(true));
ui.askNo.addEventListener("click", () => answerAsk(false));

function onClosed(ev) {
  conn.ws = null;
  showAsk(null);
  conn.mode = null;
  clearTimeout(conn.stableTimer);
  conn.stableTimer = null;
  conn.connNote = "";
  abandonQuiet();
  setRole(null);
  const known = CLOSE_REASONS[ev.code];
  let why;
  if (known) why = known.text;
  else if (ev.reason) why = plainLine(ev.reason, 200);
  else why = `the connection closed (code ${ev.code})`;
  if (!conn.everOpened && ev.code === 1006) why = "could not connect to serialmuxd";
  // The daemon's own words (who took over, why it was disabled, which message it rejected) go into the
  // terminal's record, and into the status line when the page does not reconnect by itself.  They come
  // in its "closing" event, and (cut to 123 bytes) as the close frame's reason.
  // Failed attempts while the daemon is down only update the status line.
  const said = conn.closingText || (known ? plainLine(ev.reason || "", 200) : "");
  const detail = said && said.toLowerCase() !== why.toLowerCase() ? ` (${said})` : "";
  if (conn.everOpened) termNote(`Disconnected: ${why}${detail}.`);
  if (known && !known.retry) {
    const next = ev.code === 4000 ? "Use Take over or Reconnect." : "Use Reconnect to try again.";
    // With the daemon's reason: after 4002 it names the message it rejected.
    setText(ui.stConn, `Disconnected: ${why}${detail}. ${next}`);
    refreshPort();
    return;
  }
  if (ev.code === 4003) {
    // Fell behind: resuming at our offset would ask for output that is gone or make us fall behind
    // again, so attach afresh (no from=): the daemon replays recent scrollback and goes on live.
    conn.offset = null;
    conn.connNote = " Attached afresh after falling behind the console output: output in between is "
      + "missing, and the replay may repeat lines already shown.";
    scheduleReconnect(why, " (fresh attach with a replay of recent output, not resuming)");
    return;
  }
  scheduleReconnect(why);
}

// Exponential backoff with jitter, so that many pages do not reconnect in lockstep after a restart.
function scheduleReconnect(why, how = "") {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** conn.retries);
  const delay = Math.round(base * (0.75 + Math.random() * 0.5));
  conn.retries += 1;
  setText(ui.stConn, `Disconnected: ${why}. Reconnecting in ${Math.ceil(delay / 1000)} s${how}\u2026`);
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
  if (conn.role === "writer") setText(ui.stConn, `Connected: you are typing (writer).${conn.connNote}`);
  else if (conn.role === "viewer") setText(ui.stConn, `Connected read-only (viewer).${conn.connNote}`);
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
// Enter in the key field means "send": the form's implicit submission would use its first submit button,
// which is Cancel (kept first so that Tab order matches what is seen).  requestSubmit with the Send button
// checks the field (required, pattern) like a click on it; Escape still cancels the dialog.
ui.sysrqKey.addEventListener("keydown", (ev) => {
  if (ev.key !== "Enter" || ev.isComposing) return;
  ev.preventDefault();
  ui.sysrqForm.requestSubmit(ui.sysrqSend);
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
  showAccount({ report: (text) => say(text) });
  connect();
  setInterval(() => {
    if (document.visibilityState === "visible") refreshPort();
  }, PORT_POLL_MS);
  term.focus();
}
