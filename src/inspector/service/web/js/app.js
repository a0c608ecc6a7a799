// The operator page: boots against the service, routes between views (#/live, #/review, #/threshold, #/recipes, #/audit, #/drift,
// with /<id> for an open detail) and feeds live events to every part of the page.

import { Cancelled, getJSON, listen, onKeyNeeded, probeAuth } from "./api.js";
import { createAudit } from "./audit.js";
import { createDetail } from "./detail.js";
import { createHistory } from "./history.js";
import { createLinks } from "./links.js";
import { createLive, renderCounters, setBands } from "./live.js";
import { createRecipes } from "./recipes.js";
import { createReview } from "./review.js";
import { createThreshold } from "./threshold.js";
import { fmt } from "./ui.js";

const $ = (id) => document.getElementById(id);
const VIEWS = ["live", "review", "threshold", "recipes", "audit", "drift"]; // drift: js/drift.js draws it
const SUMMARY_GAP_MS = 2000; // at most one counter refresh per this, however fast parts arrive

let models = [];
const model = () => $("model").value;

// ---- the key dialog: one at a time, however many requests wait for it -----------------------------------------

let pendingKey = null;
onKeyNeeded((reason, refused) => {
  pendingKey ??= new Promise((resolve, reject) => {
    const dialog = $("key-dialog");
    const form = $("key-form");
    $("key-reason").textContent = reason;
    form.querySelector(".form-error").textContent = refused ? `The service refused that key: ${refused}.` : "";
    form.key.value = "";
    const finish = (key) => {
      form.onsubmit = form.querySelector(".cancel").onclick = null;
      dialog.close();
      pendingKey = null;
      if (key) resolve(key);
      else reject(new Cancelled("no key given"));
    };
    form.onsubmit = (e) => {
      e.preventDefault();
      finish(form.key.value);
    };
    form.querySelector(".cancel").onclick = () => finish(null);
    dialog.oncancel = (e) => {
      e.preventDefault(); // Esc means cancel, through the same path
      finish(null);
    };
    dialog.showModal();
  });
  return pendingKey;
});

// ---- views --------------------------------------------------------------------------------------------------

const route = () => {
  const [view, id] = location.hash.replace(/^#\/?/, "").split("/");
  return { view: VIEWS.includes(view) ? view : "live", id: /^[0-9a-f]{24}$/.test(id || "") ? id : null };
};
const openDetail = (id) => { location.hash = `#/${route().view}/${id}`; };

const live = createLive({ onOpen: openDetail });
const history = createHistory({ model, onOpen: openDetail });
const review = createReview({ model, onOpen: openDetail, onReviewed: reviewed });
const threshold = createThreshold({ model, onSwitched: () => loadModels().then(() => threshold.load()) });
const audit = createAudit();
const recipes = createRecipes({ onChanged: () => loadModels() });
const detail = createDetail({
  onReviewed: reviewed,
  onClose: () => { if (route().id) location.hash = `#/${route().view}`; },
});

async function show() {
  const { view, id } = route();
  for (const v of VIEWS) $(`view-${v}`).hidden = v !== view;
  for (const a of document.querySelectorAll(".tabs a")) {
    a.toggleAttribute("aria-current", a.dataset.view === view);
  }
  if (view === "review") await review.load();
  if (view === "threshold") await threshold.load();
  if (view === "audit") await audit.load();
  if (view === "recipes") await recipes.load();
  if (!id) {
    detail.close();
    return;
  }
  try {
    await detail.open(id);
  } catch {
    location.hash = `#/${view}`; // gone (retention) or not allowed: back to the view
  }
}

// A review saved here or on another station: every place that shows the part updates.
function reviewed(inspection) {
  live.update(inspection);
  history.update(inspection);
  detail.update(inspection);
  if (route().view === "review") review.load();
  refreshSummary();
}

// ---- counters ---------------------------------------------------------------------------------------------------

function periodStart() {
  const now = new Date();
  const period = $("period").value;
  if (period === "day") return new Date(now.getFullYear(), now.getMonth(), now.getDate());
  return new Date(now - (period === "8h" ? 8 : 1) * 3600e3);
}

let summaryTimer = null;
let summaryAt = 0;
function refreshSummary() {
  if (summaryTimer) return;
  summaryTimer = setTimeout(async () => {
    summaryAt = Date.now();
    try {
      const query = new URLSearchParams({ since: periodStart().toISOString(), model: model() });
      const summary = await getJSON(`/v1/summary?${query}`);
      renderCounters(summary);
      $("review-count").hidden = !summary.review_open;
      $("review-count").textContent = summary.review_open;
    } finally {
      summaryTimer = null;
    }
  }, Math.max(0, summaryAt + SUMMARY_GAP_MS - Date.now()));
}

// ---- models -------------------------------------------------------------------------------------------------

async function loadModels() {
  models = await getJSON("/v1/models");
  const select = $("model");
  const chosen = select.value || localStorage.getItem("inspector.model");
  select.replaceChildren(...models.map((m) => new Option(m.name, m.name)));
  select.value = models.some((m) => m.name === chosen) ? chosen : models[0]?.name || "";
  select.disabled = models.length < 2;
  const lists = await Promise.all(models.map((m) => getJSON(`/v1/models/${encodeURIComponent(m.name)}/calibrations`)));
  models.forEach((m, i) => setBands(m.name, lists[i]));
  showCalibration();
}

function showCalibration() {
  const m = models.find((x) => x.name === model());
  const text = $("calibration");
  text.textContent = m?.calibration ? `Calibration ${m.calibration.name}` : "Not calibrated";
  text.classList.toggle("warn", !m?.calibration);
  text.title = m?.calibration_error || "";
}

async function loadModelData() {
  showCalibration();
  await history.load();
  const latest = (await getJSON(`/v1/inspections?${new URLSearchParams({ model: model(), limit: 1 })}`)).items[0];
  if (latest) await live.show(latest);
  history.markCurrent(latest?.id);
  refreshSummary();
}

// ---- live events --------------------------------------------------------------------------------------------

function onEvent(kind, inspection) {
  if (kind === "review") {
    reviewed(inspection);
    return;
  }
  if (kind !== "inspection" || inspection.model !== model()) return;
  history.add(inspection);
  live.show(inspection).then(() => history.markCurrent(live.current?.id));
  const m = models.find((x) => x.name === inspection.model);
  if (m && (m.calibration?.name ?? null) !== inspection.calibration) {
    loadModels(); // switched on another station
  }
  refreshSummary();
}

function onConnection(state) {
  const box = $("connection");
  box.dataset.state = state;
  box.querySelector("span").textContent = { live: "Live", reconnecting: "Reconnecting…", locked: "Locked" }[state];
  box.disabled = state !== "locked";
  box.title = state === "locked" ? "Enter the operator key to see inspections" : "";
  if (state === "live") loadModelData(); // catch up on what happened while the stream was down
}

// ---- boot ---------------------------------------------------------------------------------------------------

function tick() {
  $("clock").textContent = fmt.time(new Date().toISOString());
}

async function boot() {
  $("connection").addEventListener("click", () => location.reload()); // only enabled while locked
  tick();
  setInterval(tick, 1000);
  $("period").value = localStorage.getItem("inspector.period") || "day";
  $("period").addEventListener("change", () => {
    localStorage.setItem("inspector.period", $("period").value);
    refreshSummary();
  });
  $("model").addEventListener("change", () => {
    localStorage.setItem("inspector.model", model());
    live.clear();
    loadModelData();
    show();
  });
  await probeAuth();
  try {
    await loadModels();
  } catch (e) {
    if (e instanceof Cancelled) onConnection("locked");
    throw e;
  }
  createLinks($("links"));
  window.addEventListener("hashchange", show);
  await show();
  listen(onEvent, onConnection);
}

boot();
