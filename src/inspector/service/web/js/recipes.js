// The Recipes view: per recipe, the version that serves, the one in shadow and the one a rollback returns to; the
// golden-sample gate of the shadow; the parts the two versions judged differently, side by side with both
// heatmaps; Promote and Roll back (operator key, with a reason that goes to the audit log); and seeding the golden
// set from the recipe's reviewed parts.
//
// Each recipe card ends with an empty `<div class="recipe-refit" data-recipe="NAME">`, which js/refit.js fills
// with its "fit a new version" control.

import { Cancelled, getJSON, imageURL, sendJSON } from "./api.js";
import { badge, el, fmt } from "./ui.js";

const $ = (id) => document.getElementById(id);
const KEY_REASON = "Promoting or rolling back a version needs the operator key.";
const SHOWN = 6; // disagreements shown per recipe, newest first

const folder = (dir) => dir.split("/").filter(Boolean).pop();
const versionText = (m) => `${folder(m.dir)} · version ${m.version} · ${m.calibration ? `calibration ${m.calibration.name}` : "not calibrated"}`;

export function createRecipes({ onChanged }) {
  async function load() {
    $("recipes-error").textContent = "";
    const models = await getJSON("/v1/models");
    const cards = await Promise.all(models.map((m) => card(m.name)));
    $("recipes").replaceChildren(...cards);
    if (!cards.length) $("recipes").append(el("p", { class: "muted" }, "No recipe is loaded."));
  }

  async function card(name) {
    const path = `/v1/models/${encodeURIComponent(name)}`;
    const versions = await getJSON(`${path}/versions`);
    const { active, shadow, previous } = versions;
    let gate = null;
    let page = null;
    if (shadow) {
      [gate, page] = await Promise.all([
        getJSON(`${path}/gate`).catch((err) => ({ error: err.message })),
        getJSON(`${path}/disagreements?limit=${SHOWN}`),
      ]);
    }
    const reason = el("input", { name: "reason", maxlength: 2000, autocomplete: "off", placeholder: "why (for the audit log)" });
    const error = el("p", { class: "form-error", role: "alert" });
    const gateOk = gate && !gate.error && gate.passed;
    const promote = el("button", { type: "button", class: "primary promote", disabled: !shadow || !gateOk,
      title: !shadow ? "No shadow version to promote" : gateOk ? "" : "The golden gate must pass first" },
    shadow ? `Promote ${folder(shadow.dir)}` : "Promote");
    const rollback = el("button", { type: "button", class: "rollback", disabled: !previous,
      title: previous ? "" : "No earlier version to return to" },
    previous ? `Roll back to ${folder(previous.dir)}` : "Roll back");
    const act = (action) => async () => {
      error.textContent = "";
      promote.disabled = rollback.disabled = true;
      try {
        await sendJSON("POST", `${path}/${action}`, { reason: reason.value }, KEY_REASON);
        await load();
        onChanged();
      } catch (err) {
        error.textContent = err instanceof Cancelled ? "Not changed: the operator key is needed." : err.message;
        promote.disabled = !shadow || !gateOk;
        rollback.disabled = !previous;
      }
    };
    promote.addEventListener("click", act("promote"));
    rollback.addEventListener("click", act("rollback"));
    const seed = el("button", { type: "button", class: "seed-golden",
      title: "Copy every reviewed part of this recipe into its golden set, labelled by the review" },
    "Add reviewed parts to the golden set");
    seed.addEventListener("click", async () => {
      error.textContent = "";
      try {
        await sendJSON("POST", `${path}/golden`, { inspections: null }, KEY_REASON);
        await load();
      } catch (err) {
        error.textContent = err instanceof Cancelled ? "Not changed: the operator key is needed." : err.message;
      }
    });

    return el("article", { class: "recipe", "data-recipe": name },
      el("header", { class: "recipe-head" },
        el("h3", {}, name), el("span", { class: "muted" }, `recipe ${versions.recipe_number}`)),
      el("dl", { class: "versions" },
        el("dt", {}, "Active"), el("dd", { class: "active-version" }, versionText(active)),
        el("dt", {}, "Shadow"), el("dd", { class: "shadow-version" }, shadow ? versionText(shadow) : "none"),
        el("dt", {}, "Previous"), el("dd", {}, previous ? `${folder(previous.dir)} · version ${previous.version}` : "none"),
        el("dt", {}, "Golden set"), el("dd", {}, `${versions.golden.good} good, ${versions.golden.defect} defect`)),
      shadow ? gateBox(gate) : null,
      page ? disagreements(page) : null,
      el("div", { class: "recipe-actions" }, reason, promote, rollback, seed),
      error,
      el("div", { class: "recipe-refit", "data-recipe": name }));
  }

  function gateBox(gate) {
    if (gate.error) return el("p", { class: "gate", "data-state": "error" }, `Gate: ${gate.error}`);
    const state = !gate.checked ? "unchecked" : gate.passed ? "passed" : "failed";
    return el("div", { class: "gate", "data-state": state },
      el("p", {}, el("strong", {}, { passed: "✓ Gate passed", failed: "✗ Gate failed", unchecked: "– No gate" }[state]),
        " · ", gate.summary),
      gate.failures.length ? el("ul", { class: "gate-failures" }, gate.failures.map((line) => el("li", {}, line))) : null);
  }

  function disagreements(page) {
    const pairs = page.pairs.map((p) => el("li", { "data-same": p.active === p.shadow },
      `${p.active} → ${p.shadow}: ${fmt.int(p.count)}`));
    return el("section", { class: "disagreements", "aria-label": "Disagreements" },
      el("p", {}, `Shadow agrees on ${fmt.int(page.agree)}, disagrees on ${fmt.int(page.disagree)} `
        + "(active verdict → shadow verdict):"),
      el("ul", { class: "pairs" }, pairs),
      el("ol", { class: "pair-list" }, page.items.map(pair)));
  }

  function pair({ inspection, shadow }) {
    return el("li", { class: "pair", "data-id": inspection.id },
      picture(inspection.heatmap_url, "Active", badge(inspection), inspection.normalized_score),
      picture(shadow.heatmap_url, "Shadow", badge(shadow), shadow.normalized_score),
      el("p", { class: "muted" }, `${fmt.dateTime(inspection.created)}${inspection.part_id ? ` · ${inspection.part_id}` : ""}`));
  }

  function picture(url, label, mark, normalized) {
    const img = el("img", { alt: `${label} heatmap`, "data-kind": label.toLowerCase() });
    imageURL(url).then((u) => { img.src = u; }, () => { img.alt = `${label} heatmap: gone`; });
    return el("figure", {}, el("div", { class: "frame" }, img),
      el("figcaption", {}, `${label}: `, mark, ` ${fmt.times(normalized)}`));
  }

  async function reload() {
    try {
      await load();
    } catch (err) {
      $("recipes-error").textContent = err instanceof Cancelled ? "The operator key is needed." : err.message;
    }
  }
  // A re-fit that lands shows its version in shadow at once, whichever card started it.
  document.addEventListener("refit-ended", (event) => {
    if (event.detail.state === "succeeded" && !$("view-recipes").hidden) reload();
  });

  return { load: reload };
}
