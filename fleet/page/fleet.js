"use strict";
// The fleet page: a sites x models grid (sortable, filterable) and each site's history
// plotted as inline SVG. No outside files: everything comes from this service.
(function () {
  const $ = (id) => document.getElementById(id);
  let token = sessionStorage.getItem("fleet-token") || "";
  let data = null;
  let sortKey = "site";
  let sortDir = 1;

  async function api(path) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const r = await fetch(path, { headers });
    if (!r.ok) throw new Error(path + ": " + r.status + " " + (await r.text()));
    return r.json();
  }

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else e.setAttribute(k, v);
    }
    for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    return e;
  }

  const fmt = (x, d = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
  const age = (s) => (s < 120 ? s.toFixed(0) + " s" : s < 7200 ? (s / 60).toFixed(0) + " min"
    : (s / 3600).toFixed(1) + " h");

  function models(sites) {
    const names = new Set();
    sites.forEach((s) => s.cells.forEach((c) => names.add(c.model)));
    return [...names].sort();
  }

  function attention(s) {
    return s.stale || s.cells.some((c) => c.retrain || c.drift_alarm);
  }

  function sortValue(s, key) {
    if (key === "site") return s.site_id;
    if (key === "age") return s.age_s;
    if (key === "p99") return s.inference_p99_ms ?? -1;
    if (key === "alarms") return s.alarms_per_10min ?? -1;
    if (key === "gaps") return s.gaps;
    if (key === "floods") return (s.floods ?? -1) * 1000 + (s.stale_alarms ?? 0);
    const c = s.cells.find((x) => x.model === key.slice(2));
    // Per-model column: retrain first, then drift alarm, then alert rate.
    return c ? (c.retrain ? 2 : 0) + (c.drift_alarm ? 1 : 0) + (c.alert_rate || 0) / 10 : -1;
  }

  function renderGrid() {
    const names = models(data.sites);
    const cols = [["site", "site"], ["age", "last report"], ["gaps", "gaps"],
      ["p99", "p99 ms"], ["alarms", "alarms/10 min"], ["floods", "floods · stale alarms"],
      ...names.map((n) => ["m:" + n, n])];
    const head = $("grid-head");
    head.replaceChildren(...cols.map(([k, label]) => {
      const th = el("th", { "data-key": k }, label);
      if (k === sortKey) th.className = sortDir > 0 ? "sorted-asc" : "sorted-desc";
      th.addEventListener("click", () => {
        sortDir = sortKey === k ? -sortDir : 1;
        sortKey = k;
        renderGrid();
      });
      return th;
    }));
    const q = $("filter").value.trim().toLowerCase();
    const only = $("attention").checked;
    const rows = data.sites.filter((s) => (!only || attention(s)) && (!q ||
      s.site_id.toLowerCase().includes(q) ||
      s.cells.some((c) => c.model.toLowerCase().includes(q))));
    rows.sort((a, b) => {
      const x = sortValue(a, sortKey), y = sortValue(b, sortKey);
      return (x < y ? -1 : x > y ? 1 : 0) * sortDir || a.site_id.localeCompare(b.site_id);
    });
    $("grid-body").replaceChildren(...rows.map((s) => {
      const tr = el("tr", { "data-site": s.site_id, class: s.stale ? "stale" : "" },
        el("td", { class: "site" }, el("a", { href: "#site=" + encodeURIComponent(s.site_id) },
          s.site_id)),
        el("td", { class: "age" }, age(s.age_s) + (s.stale ? " (stale)" : "")),
        el("td", {}, s.gaps), el("td", {}, fmt(s.inference_p99_ms, 1)),
        el("td", {}, fmt(s.alarms_per_10min)),
        el("td", {}, `${s.floods ?? "–"} · ${s.stale_alarms ?? "–"}`));
      for (const n of names) {
        const c = s.cells.find((x) => x.model === n);
        if (!c) { tr.append(el("td", { class: "cell empty" }, "")); continue; }
        const cls = "cell" + (c.retrain ? " retrain" : "") + (c.drift_alarm ? " drift" : "");
        const text = `v${c.version ?? "?"} · drift ${c.drift_alarms_recent}/${c.drift_reports}` +
          ` · prec ${fmt(c.precision)} · alerts ${fmt(c.alert_rate, 3)}`;
        tr.append(el("td", { class: cls, "data-model": n, title: c.model_sha256 },
          el("a", { href: "#site=" + encodeURIComponent(s.site_id) }, text)));
      }
      return tr;
    }));
    $("summary").textContent = `${rows.length} of ${data.sites.length} sites; ` +
      `${data.sites.filter((s) => s.stale).length} stale`;
  }

  function plot(title, points, yMax) {
    const W = 360, H = 120, P = 24;
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "plot");
    svg.setAttribute("width", W);
    svg.setAttribute("height", H);
    svg.setAttribute("data-title", title);
    const add = (tag, attrs, text) => {
      const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
      if (text !== undefined) e.textContent = text;
      svg.append(e);
    };
    add("text", { x: P, y: 12 }, title);
    if (points.length) {
      const xs = points.map((p) => p[0]);
      const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
      const top = Math.max(yMax || 0, ...points.map((p) => p[1]), 1e-9);
      const px = (x) => P + ((x - x0) / (x1 - x0)) * (W - 2 * P);
      const py = (y) => H - P + 8 - (y / top) * (H - 2 * P);
      add("polyline", { fill: "none", stroke: "#1f3a5f", "stroke-width": 1.5,
        points: points.map((p) => `${px(p[0])},${py(p[1])}`).join(" ") });
      add("text", { x: 2, y: py(top) + 4 }, fmt(top, 2));
      add("text", { x: P, y: H - 2 }, "seq " + x0);
      add("text", { x: W - P - 40, y: H - 2 }, "seq " + x1);
    } else {
      add("text", { x: P, y: H / 2 }, "no data");
    }
    return svg;
  }

  async function renderSite(site) {
    const h = await api("/api/sites/" + encodeURIComponent(site) + "/reports?limit=1000");
    $("site-title").textContent = "Site " + site + " — " + h.reports.length + " reports";
    const drift = h.reports.filter((r) => r.kind === "drift").reverse();
    const health = h.reports.filter((r) => r.kind === "health").reverse();
    $("plots").replaceChildren(
      plot("drift alarm", drift.map((r) => [r.seq, r.body.alarm ? 1 : 0]), 1),
      plot("alert rate", drift.map((r) => [r.seq, r.body.alert_rate])),
      plot("max feature PSI", drift.map((r) => [r.seq,
        Math.max(0, ...r.body.features.map((f) => f.psi || 0))])),
      plot("inference p99 ms", health.filter((r) => r.body.inference_p99_ms !== null)
        .map((r) => [r.seq, r.body.inference_p99_ms])),
      plot("alarms / 10 min", health.map((r) => [r.seq, r.body.alarm.per_10min_avg])));
    $("history").tBodies[0].replaceChildren(...h.reports.slice(0, 200).map((r) => el("tr", {},
      el("td", {}, r.seq), el("td", {}, r.kind),
      el("td", {}, new Date(r.received * 1000).toISOString().slice(0, 19)),
      el("td", {}, r.kind === "drift"
        ? `alarm ${r.body.alarm} · windows ${r.body.windows} · alert rate ${r.body.alert_rate}`
        : `agent ${r.body.agent_version} · windows ${r.body.windows_scored} · ` +
          `alarms/10 min ${r.body.alarm.per_10min_avg}`))));
  }

  async function route() {
    $("error").textContent = "";
    const m = location.hash.match(/^#site=(.+)$/);
    $("grid-view").hidden = !!m;
    $("site-view").hidden = !m;
    try {
      if (m) {
        await renderSite(decodeURIComponent(m[1]));
      } else {
        data = await api("/api/grid");
        renderGrid();
      }
      document.body.dataset.ready = "1";
    } catch (e) {
      $("error").textContent = e.message;
      document.body.dataset.ready = "error";
    }
  }

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value;
    sessionStorage.setItem("fleet-token", token);
    route();
  });
  $("filter").addEventListener("input", () => data && renderGrid());
  $("attention").addEventListener("change", () => data && renderGrid());
  $("back").addEventListener("click", (ev) => { ev.preventDefault(); location.hash = ""; });
  window.addEventListener("hashchange", route);
  route();
})();
