// The detail view of one inspection: original, overlay with regions and raw map side by side, the record's
// facts and stage timings, and the operator's review (good / defect with a note).

import { Cancelled, getJSON, imageURL, sendJSON } from "./api.js";
import { VERDICTS, REVIEWS, drawRegions, el, fact, fmt, icon, verdictOf } from "./ui.js";

const $ = (id) => document.getElementById(id);
const STAGES = ["queue", "decode", "preprocess", "features", "search", "postprocess", "store"];

export function createDetail({ onReviewed, onClose }) {
  const dialog = $("detail");
  const form = $("review-form");
  const error = form.querySelector(".form-error");
  let shown = null;

  form.operator.value = localStorage.getItem("inspector.operatorName") || "";
  $("detail-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => {
    shown = null;
    onClose();
  });

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const verdict = e.submitter?.value;
    if (!shown || !verdict) return;
    const id = shown.id;
    error.textContent = "";
    localStorage.setItem("inspector.operatorName", form.operator.value.trim());
    const body = { verdict, note: form.note.value.trim(), operator: form.operator.value.trim() || null };
    try {
      const saved = await sendJSON("POST", `/v1/inspections/${id}/review`, body,
        "Marking a part good or defect needs the operator key.");
      onReviewed(saved);
    } catch (err) {
      error.textContent = err instanceof Cancelled ? "Not saved: the operator key is needed." : `Not saved: ${err.message}`;
    }
  });

  function render(inspection) {
    shown = inspection;
    const v = verdictOf(inspection);
    const head = $("detail-badge");
    head.dataset.verdict = v;
    head.replaceChildren(icon(v, 28), VERDICTS[v].word);
    $("detail-title").textContent = `Part ${inspection.part_id || "without id"} · ${fmt.dateTime(inspection.created)}`;

    const sources = { image: inspection.image_url, heatmap: inspection.heatmap_url, map: inspection.map_url };
    for (const img of dialog.querySelectorAll(".detail-images img")) {
      img.removeAttribute("src");
      imageURL(sources[img.dataset.kind]).then((url) => { if (shown === inspection) img.src = url; }, () => {});
    }
    drawRegions(dialog.querySelector(".detail-images svg"), inspection);

    const facts = $("detail-facts");
    facts.replaceChildren();
    fact(facts, "Score", `${fmt.score(inspection.score)} (${fmt.times(inspection.normalized_score)} threshold)`);
    fact(facts, "Threshold", inspection.threshold === null ? "not calibrated"
      : `${fmt.score(inspection.threshold)} image · ${fmt.score(inspection.pixel_threshold)} pixel`);
    fact(facts, "Calibration", inspection.calibration || "–");
    fact(facts, "Model", `${inspection.model} (version ${inspection.model_version})`);
    fact(facts, "Image", `${inspection.width} × ${inspection.height} px`);
    fact(facts, "Regions", inspection.regions.length ? inspection.regions.slice(0, 3).map((r) =>
      `${r.width}×${r.height} at ${r.x},${r.y}`).join("; ") + (inspection.regions.length > 3
      ? ` and ${inspection.regions.length - 3} more` : "") : "none");
    fact(facts, "Line / camera", `${inspection.line || "–"} / ${inspection.camera || "–"}`);
    fact(facts, "Record", inspection.id);
    renderTimings(inspection.timings_ms);

    const review = inspection.review;
    $("detail-review").replaceChildren(review
      ? el("span", { "data-review": review.verdict }, `${REVIEWS[review.verdict].icon} Marked ${
        REVIEWS[review.verdict].word.toLowerCase()}${review.operator ? ` by ${review.operator}` : ""} at ${
        fmt.dateTime(review.reviewed_at)}${review.note ? `: “${review.note}”` : ""}`)
      : "Not reviewed yet.");
    form.note.value = review?.note || "";
    for (const b of form.querySelectorAll(".decide button")) {
      b.setAttribute("aria-pressed", String(review?.verdict === b.value));
    }
    error.textContent = "";
  }

  // One bar per stage, widths in proportion to time: where the milliseconds of this part went.
  function renderTimings(t) {
    const total = t.total || 1;
    $("detail-timings").replaceChildren(
      el("h3", {}, `Timings · ${fmt.ms(t.total)} total`),
      el("ol", {}, STAGES.map((s) => el("li", {},
        el("span", { class: "step" }, s),
        el("span", { class: "bar" }, el("i", { style: `width:${Math.max(0.5, (100 * t[s]) / total)}%` })),
        el("span", { class: "ms" }, fmt.ms(t[s]))))));
  }

  return {
    async open(id) {
      const inspection = await getJSON(`/v1/inspections/${id}`);
      render(inspection);
      if (!dialog.open) dialog.showModal();
    },
    close() {
      if (dialog.open) dialog.close();
    },
    update(inspection) {
      if (shown && shown.id === inspection.id) render(inspection);
    },
  };
}
