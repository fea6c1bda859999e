// The sign-in form: POST /api/v1/session with {"user", "password"} as JSON; the daemon answers with an
// HttpOnly session cookie (this script never sees it) and the page goes on to ?next= (a path on this
// server only) or the console list.
//
// Accessibility: every field has a label; errors go to a role=alert region that the fields reference with
// aria-describedby, the field at fault gets aria-invalid and the focus; nothing depends on colour alone.
import { api, plainLine, safeNext, setText } from "./common.js";

const $ = (id) => document.getElementById(id);
const form = $("signin-form");
const user = $("user");
const password = $("password");
const error = $("error");
const progress = $("progress");
const next = safeNext(new URLSearchParams(location.search).get("next"));
let busy = false;

function showError(text, field) {
  for (const input of [user, password]) input.removeAttribute("aria-invalid");
  setText(progress, "");
  // Cleared first, so that the same words twice in a row are announced again.
  error.textContent = "";
  setTimeout(() => setText(error, text), 50);
  if (field) {
    field.setAttribute("aria-invalid", "true");
    field.focus();
  }
}

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (busy) return;
  if (!user.value.trim()) {
    showError("Enter your user name.", user);
    return;
  }
  if (!password.value) {
    showError("Enter your password.", password);
    return;
  }
  busy = true;
  error.textContent = "";
  setText(progress, "Signing in\u2026");
  try {
    await api("/session", {
      method: "POST",
      body: { user: user.value.trim(), password: password.value },
      redirect: false,
      csrf: false,
    });
  } catch (err) {
    busy = false;
    password.value = "";
    if (err.status === 401) {
      showError("Wrong user name or password.", password);
    } else if (err.status === 429) {
      // "too many failed sign-ins; try again in N s"
      showError(`Too many failed sign-ins from here. ${plainLine(err.message, 200)}.`, password);
    } else {
      showError(`Could not sign in: ${plainLine(err.message, 200)}.`, null);
    }
    return;
  }
  password.value = "";
  setText(progress, "Signed in. Opening the consoles\u2026");
  location.assign(next);
});

// Already signed in, or no sign-in at all on this daemon?  (A 401 here just means: show the form.)
async function checkAccount() {
  let account;
  try {
    account = await api("/session", { redirect: false });
  } catch {
    return;
  }
  if (account && account.auth === false) {
    form.hidden = true;
    $("intro").hidden = true;
    $("no-auth").hidden = false;
    return;
  }
  if (account && account.user) {
    setText($("signed-in-user"), plainLine(account.user, 80));
    $("continue").href = next;
    $("signed-in").hidden = false;
  }
}

$("continue").href = next;
user.focus();
checkAccount();
