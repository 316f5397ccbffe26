// Forewarn crew page: shared state and helpers. No framework, no outside requests.
// The page's scripts are plain (not modules), loaded in order by index.html: core.js,
// words.js, session.js, cards.js, verdict.js, assets.js, kpis.js, models.js, app.js; each one's
// top-level names are visible to the ones after it.
// Every string from the agent (asset names, notes, feature names) came from MQTT or a
// person: it is only ever put on the page with textContent / setAttribute, never as HTML.
"use strict";

const HISTORY_PAGE = 25;
const DEVICE_KEY = "forewarn.device";  // the label only: the session itself is an HttpOnly cookie
const MUTATE = { "X-Forewarn-Request": "1" };  // the agent refuses cookie changes without it
const state = {
  session: null, model: null, rules: null, historyOffset: 0, refreshing: false, again: false,
  loaded: false,          // a load has succeeded at least once
  lastOk: null,           // epoch s of the last successful load
  failSince: null,        // epoch s of the first failed load since the last good one
  failWhy: "",
  liveDownSince: null,    // epoch s the live stream dropped (null: up, or never tried)
  needSignIn: false,      // reads need a signed-in device
  signedOutWhy: "",
  openItems: [],
  assets: {},             // asset name -> its /api/assets row: the cards show a dead device too
  precision: { assets: {} },  // asset name -> its live precision (GET /api/precision)
  focus: "",              // data-focus key of the control to refocus after a re-render
};

const $ = (id) => document.getElementById(id);
const now = () => Date.now() / 1000;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = String(v);
    else node.setAttribute(k, String(v));
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function toast(msg, bad) {
  const t = $("toast");
  t.textContent = msg;
  t.className = bad ? "toast bad" : "toast";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 5000);
}

async function api(path, options) {
  const opts = Object.assign({ headers: {}, credentials: "same-origin" }, options || {});
  if (opts.method && opts.method !== "GET") Object.assign(opts.headers, MUTATE);
  if (opts.body !== undefined) opts.headers["Content-Type"] = "application/json";
  let res;
  try { res = await fetch(path, opts); } catch (e) {
    const err = new Error("no answer from the agent");
    err.status = 0;
    throw err;
  }
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    const detail = data && typeof data.detail === "string" ? data.detail : `HTTP ${res.status}`;
    const err = new Error(detail);
    err.status = res.status;
    err.retryAfter = res.headers.get("Retry-After");
    throw err;
  }
  return data;
}

