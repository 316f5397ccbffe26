// Forewarn crew page: the "Model" card, GET /api/models: which model scores, where a
// candidate's staged rollout is (shadow, canary on a share of assets, paused, waiting), and
// why the last one was rolled back. Hidden on an agent without a model registry (404).
"use strict";

function stageText(w) {
  const of = `stage ${w.stage + 1} of ${w.stages.length}`;
  const where = w.share ? `scores ${Words.num(w.share * 100)} % of the assets (${w.label}, ${of})`
    : `runs in shadow beside the active model, its scores unseen (${of})`;
  const held = `held ${Words.duration(w.held_s)} of ${Words.duration(w.hold_s)}`;
  const paused = w.paused ? ` — paused by ${w.paused_by || "someone"}, the hold clock is stopped` : "";
  const waiting = w.waiting ? ` — ${w.waiting}` : "";
  return `Candidate ${w.model} ${where}; ${held}${paused}${waiting}.`;
}

// The rollback reason already starts with its stage ("canary 5 %: candidate error rate …").
function endText(w) {
  const last = w.history.length ? w.history[w.history.length - 1] : null;
  const at = last ? ` (${Words.when(last.ts)})` : "";
  const stage = w.stages[w.stage] ? w.stages[w.stage].label : "";
  const what = {
    promoted: "was promoted: it now scores every asset",
    rolled_back: "was rolled back automatically",
    aborted: `was stopped by ${last ? last.actor : "a person"} at ${stage} and rolled back`,
    ended: "was replaced or cleared by hand",
  }[w.status] || w.status;
  return `Candidate ${w.model} ${what}${at}` + (w.reason && w.status !== "promoted" ? `: ${w.reason}` : ".");
}

async function loadModels() {
  const section = $("models-section");
  let m;
  try { m = await api("/api/models"); } catch (e) {
    if (e.status === 401) throw e;  // the session ended: refresh() says so
    section.hidden = e.status === 404;  // no registry here; other errors keep the last card
    return;
  }
  section.hidden = false;
  const r = m.rollout || {};
  $("model-active").textContent = r.active ? `Scoring with ${r.name}/${r.active}.` : "";
  const w = r.walk, running = w && w.status === "running";
  const card = $("model-rollout"), notice = $("model-rollback");
  card.textContent = running ? stageText(w) : (r.candidate ? `Candidate ${r.name}/${r.candidate} runs in ${r.mode || "shadow"} mode.` : "No candidate model is being tried.");
  card.classList.toggle("paused", Boolean(running && w.paused));
  notice.hidden = !w || running;
  notice.textContent = w && !running ? endText(w) : "";
  notice.className = `rollback ${w && (w.status === "rolled_back" || w.status === "aborted") ? "bad" : "done"}`;
}
