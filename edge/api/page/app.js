// Forewarn crew page: the status banner, loading, live updates and the start.
"use strict";

// What the list says is always one of: "Loading…", the alerts of a fresh load (or "No open
// alerts" when a fresh load really returned none), or the last known alerts marked as out of
// date (agent unreachable, live updates lost) or hidden behind "Signed out".

function render() {
  const banner = $("banner"), list = $("list-state"), cards = $("open-alerts");
  let text = "", cls = "banner";
  if (state.needSignIn && !state.session) {
    text = "Signed out — this agent shows alerts only to signed-in devices. Sign in above.";
    cls += " signedout";
  } else if (state.failSince !== null) {
    text = `Cannot reach the agent since ${Words.clock(state.failSince)} — the list below may be out of date` +
      (state.lastOk ? ` (last updated ${Words.when(state.lastOk)}).` : ".");
    cls += " stale";
  } else if (state.liveDownSince !== null) {
    text = `Live updates lost since ${Words.clock(state.liveDownSince)} — the list below may be out of date` +
      (state.lastOk ? ` (last checked ${Words.clock(state.lastOk)}).` : ".");
    cls += " stale";
  }
  banner.textContent = text;
  banner.className = cls;
  banner.hidden = !text;
  const stale = cls.includes("stale");
  cards.classList.toggle("stale", stale);
  $("alarm-load").classList.toggle("stale", stale);  // the last figures, as out of date as the list
  $("precision").classList.toggle("stale", stale);
  const n = state.openItems.length;
  if (state.needSignIn && !state.session) list.textContent = "Signed out.";
  else if (!state.loaded) list.textContent = state.failSince !== null ? "Not loaded: the agent does not answer." : "Loading…";
  else if (n === 0) list.textContent = stale ? `No open alerts as of ${Words.when(state.lastOk)} — may be out of date.` : "No open alerts.";
  else list.textContent = stale ? `Last known alerts, as of ${Words.when(state.lastOk)}:` : "";
  list.hidden = !list.textContent;
  $("open-count").textContent = state.loaded && n ? `(${n})` : "";
}

// ---- loading --------------------------------------------------------------------------------

async function refresh() {
  if (state.refreshing) { state.again = true; return; }
  state.refreshing = true;
  try {
    if (state.session) await checkSession();
    const [open, assets] = await Promise.all([api("/api/alerts?state=unresolved&limit=200"), api("/api/assets")]);
    state.needSignIn = false;
    state.openItems = open.items;
    state.assets = Object.fromEntries(assets.items.map((s) => [s.asset, s]));
    replaceCards(open.items);
    await loadPrecision();  // before the asset table, which shows it per asset
    $("assets").tBodies[0].replaceChildren(...assets.items.map(assetRow));
    // The Model column only under a template bundle, where assets learn their normal.
    $("assets").classList.toggle("commissioning", assets.items.some((s) => s.commissioning));
    await loadAlarmLoad();
    await loadModels();
    await loadHistory(false);
    await loadDevices();
    state.loaded = true;
    state.lastOk = now();
    state.failSince = null;
  } catch (e) {
    if (e.status === 401) {
      state.needSignIn = true;
      state.openItems = [];
      replaceCards([]);
      sessionEnded();
    } else if (state.failSince === null) {
      state.failSince = now();
      state.failWhy = e.message;
    }
  } finally {
    state.refreshing = false;
    render();
    if (state.again) { state.again = false; refresh(); }
  }
}

// ---- live updates: server-sent events, with polling as the fallback ------------------------

const stream = { source: null, timer: null };

// (Re)connects the stream: also after signing in, since reads may need the session cookie.
function live() {
  const badge = $("live");
  const poll = (ms) => { clearInterval(stream.timer); stream.timer = setInterval(refresh, ms); };
  if (stream.source) stream.source.close();
  let source = null;
  try { source = new EventSource("/api/events"); } catch (e) { source = null; }
  stream.source = source;
  // Polling is the backstop: slow while the stream is up, fast while it is down.
  poll(source ? 30000 : 5000);
  if (!source) return;
  source.addEventListener("open", () => {
    badge.textContent = "live";
    badge.className = "live ok";
    const was = state.liveDownSince;
    state.liveDownSince = null;
    poll(30000);
    if (was !== null) refresh(); else render();
  });
  source.addEventListener("change", () => refresh());
  source.addEventListener("error", () => {
    if (stream.source !== source) return;  // replaced meanwhile
    if (state.liveDownSince === null) state.liveDownSince = now();
    badge.textContent = source.readyState === EventSource.CLOSED ? "live updates off: checking every 5 s" : "live updates lost: reconnecting…";
    badge.className = "live bad";
    poll(5000);
    refresh();  // find out at once whether the agent itself still answers
  });
}

async function loadModel() {
  try { state.model = await api("/api/model"); } catch (e) { state.model = null; }
  $("legend").textContent = Words.legend(state.model);
}

async function start() {
  $("signin").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("token").value.trim(), device = $("device").value.trim();
    $("token").value = "";
    signIn(token, device);
  });
  $("device").value = localStorage.getItem(DEVICE_KEY) || "";
  $("signout").addEventListener("click", signOut);
  $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); loadHistory(false).catch((e) => toast(e.message, true)); });
  $("more").addEventListener("click", () => loadHistory(true).catch((e) => toast(e.message, true)));
  render();
  try {
    const st = await api("/api/status");
    $("site").textContent = st.site;
    state.rules = st.rules || null;
  } catch (e) { /* refresh() reports */ }
  await loadModel();
  try { state.session = await api("/api/session"); } catch (e) { state.session = null; }
  showWho();
  await refresh();
  live();  // the periodic refresh also keeps the "… ago" times current
}

document.addEventListener("DOMContentLoaded", start);
