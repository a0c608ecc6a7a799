// "Fit a new version": one control per recipe that starts a background re-fit from the reviewed images and shows
// its progress live (stage, percent, elapsed) until the new version has landed as the recipe's shadow.
//
// Self-starting: it fills every `<div class="recipe-refit" data-recipe="NAME">` on the page, also ones a view adds
// later (the Recipes view, js/recipes.js, ends each recipe card with one); an empty data-recipe follows the model
// chosen in the top bar. The jobs are read from GET /v1/refits (operator key, never asked for just to read them)
// when a panel comes into view and every POLL_MS while a job runs. When a job ends, a
// `refit-ended` event (detail: the job) is dispatched on the document, so a view can show the new shadow.

import { Cancelled, sendJSON } from "./api.js";
import { el } from "./ui.js";

const POLL_MS = 2000;
const KEY_REASON = "Fitting a new version needs the operator key.";
const STAGES = {
  dataset: "Gathering the reviewed images",
  fit: "Fitting (low priority: the line keeps inspecting)",
  calibrate: "Calibrating on the reviewed images",
  load: "Loading as the shadow version",
  done: "Done",
};

const panels = new Set();
let jobs = [];
let locked = false;
let timer = null;

const modelSelect = () => document.getElementById("model");
const recipeOf = (panel) => panel.dataset.recipe || modelSelect()?.value || "";
const latestJob = (recipe) => jobs.find((j) => j.model === recipe);

// The jobs as the service last listed them; one that was running and has ended is announced to the page.
function setJobs(next) {
  const wasRunning = new Set(jobs.filter((j) => j.state === "running").map((j) => j.id));
  jobs = next;
  for (const job of jobs) {
    if (wasRunning.has(job.id) && job.state !== "running") {
      document.dispatchEvent(new CustomEvent("refit-ended", { detail: job }));
    }
  }
}

function elapsed(seconds) {
  const s = Math.round(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function mount(panel) {
  if (panels.has(panel)) return;
  panels.add(panel);
  const error = el("p", { class: "form-error", role: "alert" });
  const start = el("button", { type: "button", class: "primary refit-start" }, "Fit a new version");
  const cancel = el("button", { type: "button", class: "refit-cancel", hidden: true }, "Cancel");
  const status = el("div", { class: "refit-status", role: "status", "aria-live": "polite" });
  start.addEventListener("click", () => act(panel, error, () => sendJSON("POST",
    `/v1/models/${encodeURIComponent(recipeOf(panel))}/refit`, { reason: "fit a new version from the page" },
    KEY_REASON)));
  cancel.addEventListener("click", () => {
    const job = latestJob(recipeOf(panel));
    if (job) act(panel, error, () => sendJSON("DELETE", `/v1/refits/${job.id}`, undefined, KEY_REASON));
  });
  panel.replaceChildren(
    el("p", { class: "muted" }, "Fits a new version on the training images plus the parts reviewed good, "
      + "calibrates it on reviewed parts held out, and lands it as the shadow to compare before promoting."),
    el("div", { class: "refit-buttons" }, start, cancel),
    status, error);
  render(panel);
  visibility.observe(panel);
}

// The jobs are read when a panel comes into view (its view is shown), not while it is hidden.
const visibility = new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) refresh();
});

async function act(panel, error, request) {
  error.textContent = "";
  try {
    const job = await request();
    setJobs([job, ...jobs.filter((j) => j.id !== job.id)]);
    locked = false;
  } catch (err) {
    error.textContent = err instanceof Cancelled ? "Not started: the operator key is needed." : err.message;
  }
  render(panel);
  schedule();
}

function render(panel) {
  const job = latestJob(recipeOf(panel));
  const running = job?.state === "running";
  panel.querySelector(".refit-start").disabled = running || !recipeOf(panel);
  panel.querySelector(".refit-cancel").hidden = !running;
  panel.dataset.state = job?.state || "none";
  const status = panel.querySelector(".refit-status");
  if (locked && !job) {
    status.replaceChildren(el("p", { class: "muted" }, "Enter the operator key to see re-fits."));
    return;
  }
  if (!job) {
    status.replaceChildren();
    return;
  }
  const step = job.step ? ` · ${job.step}` : "";
  const lines = [el("p", { class: "refit-stage" }, running ? `${STAGES[job.stage]}${step}` : {
    succeeded: `New version ${job.version} is the shadow.`,
    failed: "The re-fit failed.",
    cancelled: "The re-fit was cancelled.",
  }[job.state])];
  if (running) {
    lines.push(el("progress", { max: 100, value: job.percent, "aria-label": "Progress of this stage" }),
      el("p", { class: "muted" }, `${Math.round(job.percent)}% of this stage · ${elapsed(job.elapsed_s)} elapsed`));
  } else {
    lines.push(el("p", { class: "muted" }, `${job.message} (${elapsed(job.elapsed_s)})`));
  }
  for (const note of running ? [] : job.notes) {
    lines.push(el("p", { class: "refit-note" }, note));
  }
  status.replaceChildren(...lines);
}

// The jobs without asking for a key: a station that holds the camera key shows the button and is asked for the
// operator key only when someone presses it. The key is the one api.js keeps for the tab, sent the same way.
async function readJobs() {
  const key = sessionStorage.getItem("inspector.operatorKey");
  const response = await fetch("/v1/refits", { headers: key ? { "X-API-Key": key } : {} });
  if (response.status === 401 || response.status === 403) return null;
  if (!response.ok) throw new Error(response.statusText);
  return response.json();
}

async function refresh() {
  let listed;
  try {
    listed = await readJobs();
  } catch {
    schedule(); // the service is away: a running job is polled again
    return;
  }
  locked = listed === null;
  if (listed) setJobs(listed);
  for (const panel of panels) {
    if (panel.isConnected) {
      render(panel);
    } else {
      panels.delete(panel);
      visibility.unobserve(panel);
    }
  }
  schedule();
}

function schedule() {
  clearTimeout(timer);
  if (jobs.some((j) => j.state === "running")) timer = setTimeout(refresh, POLL_MS);
}

function mountAll(root) {
  if (!(root instanceof Element)) return;
  if (root.matches(".recipe-refit")) mount(root);
  for (const panel of root.querySelectorAll(".recipe-refit")) mount(panel);
}

mountAll(document.body);
new MutationObserver((changes) => {
  for (const change of changes) {
    change.addedNodes.forEach(mountAll);
    if (change.target === modelSelect()) panels.forEach(render); // the models arrived: the buttons can name one
  }
}).observe(document.body, { childList: true, subtree: true });
modelSelect()?.addEventListener("change", () => panels.forEach(render));
