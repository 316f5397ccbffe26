// Forewarn crew page: signing a device in once, and the signed-in devices.
"use strict";

async function signIn(token, device) {
  const msg = $("signin-msg");
  msg.textContent = "Signing in…";
  try {
    state.session = await api("/api/session", { method: "POST", body: JSON.stringify({ token, device }) });
    localStorage.setItem(DEVICE_KEY, device);
    state.signedOutWhy = "";
    msg.textContent = "";
    if (!state.model) await loadModel();
    if (state.liveDownSince !== null || !stream.source) live();
  } catch (e) {
    state.session = null;
    if (e.status === 401) msg.textContent = "Token refused — check it and try again.";
    else if (e.status === 429) msg.textContent = `Token refused too often — try again in ${e.retryAfter || "a few"} s.`;
    else msg.textContent = `Sign-in failed: ${e.message}`;
  }
  showWho();
  refresh();
}

async function signOut() {
  try { await api("/api/session", { method: "DELETE" }); } catch (e) { /* signed out anyway */ }
  state.session = null;
  state.signedOutWhy = "Signed out.";
  showWho();
  refresh();
}

function showWho() {
  const s = state.session;
  $("signin").hidden = Boolean(s);
  $("who").hidden = !s;
  $("person").textContent = s ? s.person : "";
  $("device-name").textContent = s ? s.device : "";
  $("devices-section").hidden = !s;
  if (!s && state.signedOutWhy && !$("signin-msg").textContent) $("signin-msg").textContent = state.signedOutWhy;
}

// The session ended elsewhere (revoked, expired, person removed): say so, show the form.
function sessionEnded() {
  if (!state.session) return;
  state.session = null;
  state.signedOutWhy = "Signed out — this device's session was revoked or has expired. Sign in again.";
  $("signin-msg").textContent = state.signedOutWhy;
  showWho();
}


async function loadDevices() {
  if (!state.session) return;
  const page = await api("/api/sessions");
  $("devices").tBodies[0].replaceChildren(...page.items.map((s) => {
    const b = el("button", { type: "button", class: "quiet revoke-btn", text: s.current ? "Sign out" : "Revoke",
                             "aria-label": `${s.current ? "Sign out" : "Revoke"}: ${s.person} on ${s.device}` });
    b.addEventListener("click", async () => {
      if (s.current) return signOut();
      try {
        await api(`/api/sessions/${encodeURIComponent(s.id)}`, { method: "DELETE" });
        toast(`${s.person} on ${s.device}: signed out by ${state.session.person}`);
      } catch (e) { toast(`Could not revoke: ${e.message}`, true); }
      refresh();
    });
    return el("tr", { "data-session-id": s.id }, el("td", { text: s.person }),
      el("td", { text: `${s.device}${s.current ? " (this device)" : ""}` }),
      el("td", { text: Words.when(s.created) }), el("td", { text: Words.until(s.expires) }), el("td", {}, b));
  }));
}

async function checkSession() {
  try {
    state.session = await api("/api/session");
  } catch (e) {
    if (e.status === 401) sessionEnded(); else throw e;
  }
  showWho();
}

