// The sign-in form: POST /api/v1/session with {"user", "password"} as JSON; the daemon answers with an
// HttpOnly session cookie (this script never sees it) and the page goes on to ?next= (a path on this
// server only) or the console list.
//
// With [auth.oidc] client_id, GET /api/v1/signin names the provider and a "Sign in with NAME" link
// appears: a plain navigation to /signin/oidc?next=..., which the daemon finishes on its own (back to
// ?next= signed in).  When that fails the daemon comes back here with ?oidc_error=CODE, one of a closed
// set shown in this page's own words (nothing from the URL is ever displayed).
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

const OIDC_ERRORS = {
  expired: "The sign-in with your identity provider took too long or was already used. Try again.",
  state: "The identity provider's answer did not belong to this browser's sign-in. Try again.",
  denied: "Your identity provider did not sign you in: it was refused or cancelled there.",
  failed: "Your identity provider's answer could not be verified. Try again, or ask your administrator.",
  unavailable: "Your identity provider cannot be reached. Try again later, or sign in with a password.",
};

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

// Sign in with the OpenID provider, where this daemon has one.
async function offerOidc() {
  let methods;
  try {
    methods = await api("/signin", { redirect: false, csrf: false });
  } catch {
    return; // the password form still works
  }
  const oidc = methods && methods.oidc;
  if (!oidc || typeof oidc.provider !== "string") return;
  const link = $("btn-oidc");
  setText(link, `Sign in with ${plainLine(oidc.provider, 80)}`);
  link.href = `/signin/oidc?${new URLSearchParams({ next })}`;
  $("oidc").hidden = false;
}

$("continue").href = next;
user.focus();
const oidcError = new URLSearchParams(location.search).get("oidc_error");
if (oidcError !== null && Object.hasOwn(OIDC_ERRORS, oidcError)) showError(OIDC_ERRORS[oidcError], null);
checkAccount();
offerOidc();
