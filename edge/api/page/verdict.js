// Forewarn crew page: the verdict dialog. Resolving an alert asks what the person found —
// fault confirmed / false alarm / could not tell — with an optional note and work-order id;
// the same dialog gives or changes the verdict of an alert resolved already (history).
// A modal <dialog>: Esc cancels, Tab and Shift+Tab stay inside it, the focus returns to the
// button that opened it; every target is at least 44 px (tablets, gloves).
"use strict";

const VERDICT_WORDS = { confirmed: "Fault confirmed", false_alarm: "False alarm", unsure: "Could not tell" };
const verdictDialog = { alert: null, mode: "resolve", choice: null, opener: "" };

function verdictText(a) {
  if (!a.verdict) return "—";
  return `${VERDICT_WORDS[a.verdict] || a.verdict}${a.work_order ? ` · ${a.work_order}` : ""}` +
    `${a.verdict_by ? ` (${a.verdict_by})` : ""}`;
}

// mode "resolve": POST …/resolve; "verdict": POST …/verdict (amend, or judge an auto-cleared one).
function openVerdict(alert, mode, note, openerFocus) {
  if (!state.session) {
    toast("Sign this device in first.", true);
    $("token").focus();
    return;
  }
  const d = $("verdict");
  Object.assign(verdictDialog, { alert, mode, choice: null, opener: openerFocus || "" });
  $("verdict-title").textContent = mode === "resolve" ? `Resolve ${alert.asset}` : `Verdict on alert #${alert.id} (${alert.asset})`;
  $("verdict-lead").textContent = mode === "resolve" ? "What did you find?"
    : (alert.verdict ? `Now: ${verdictText(alert)}. What did you find?` : "Nobody gave a verdict yet. What did you find?");
  $("verdict-note").value = note || "";
  $("verdict-wo").value = "";
  $("verdict-msg").textContent = "";
  $("verdict-ok").textContent = mode === "resolve" ? "Resolve" : "Save verdict";
  choose(null);
  d.showModal();
  d.querySelector(".verdict-btn").focus();
}

function choose(verdict) {
  verdictDialog.choice = verdict;
  for (const b of $("verdict").querySelectorAll(".verdict-btn")) b.setAttribute("aria-pressed", String(b.dataset.verdict === verdict));
  $("verdict-ok").disabled = !verdict;
}

function closeVerdict() {
  const d = $("verdict");
  if (d.open) d.close();
  const opener = verdictDialog.opener && document.querySelector(`[data-focus="${verdictDialog.opener}"]`);
  if (opener) opener.focus();
  verdictDialog.alert = null;
}

function focusables(d) {
  return [...d.querySelectorAll("button, input")].filter((x) => !x.disabled && x.offsetParent !== null);
}

async function submitVerdict() {
  const { alert, mode, choice } = verdictDialog;
  if (!alert || !choice) return;
  const wo = $("verdict-wo");
  if (!wo.checkValidity()) {
    $("verdict-msg").textContent = "Work order: letters, digits and - _ . / # : only (up to 64).";
    wo.focus();
    return;
  }
  const body = { verdict: choice, note: $("verdict-note").value.trim() || null, work_order: wo.value.trim() || null };
  const ok = $("verdict-ok");
  ok.disabled = true;
  try {
    await api(`/api/alerts/${encodeURIComponent(alert.id)}/${mode === "resolve" ? "resolve" : "verdict"}`,
      { method: "POST", body: JSON.stringify(body) });
    const note = $("open-alerts").querySelector(`input.note[data-alert-id="${alert.id}"]`);
    if (note) note.value = "";
    closeVerdict();
    toast(`${alert.asset}: ${mode === "resolve" ? "resolved" : "verdict saved"} — ${VERDICT_WORDS[choice].toLowerCase()}, by ${state.session.person}`);
    refresh();
  } catch (e) {
    if (e.status === 401) { sessionEnded(); closeVerdict(); }
    $("verdict-msg").textContent = `Could not save: ${e.message}`;
    toast(`Could not save the verdict: ${e.message}`, true);
    ok.disabled = false;
  }
}

function setUpVerdict() {
  const d = $("verdict");
  for (const b of d.querySelectorAll(".verdict-btn")) b.addEventListener("click", () => choose(b.dataset.verdict));
  $("verdict-form").addEventListener("submit", (ev) => { ev.preventDefault(); submitVerdict(); });
  $("verdict-cancel").addEventListener("click", closeVerdict);
  $("verdict-wo").addEventListener("input", () => { $("verdict-msg").textContent = ""; });
  d.addEventListener("cancel", (ev) => { ev.preventDefault(); closeVerdict(); });  // Esc
  d.addEventListener("keydown", (ev) => {
    if (ev.key !== "Tab") return;
    const list = focusables(d);
    if (!list.length) return;
    const first = list[0], last = list[list.length - 1];
    if (ev.shiftKey && (document.activeElement === first || !d.contains(document.activeElement))) {
      ev.preventDefault();
      last.focus();
    } else if (!ev.shiftKey && (document.activeElement === last || !d.contains(document.activeElement))) {
      ev.preventDefault();
      first.focus();
    }
  });
}

document.addEventListener("DOMContentLoaded", setUpVerdict);
