// The review queue: parts with verdict `review` that no operator has judged yet, each with good / defect
// buttons and a note; below it the parts reviewed most recently, with their decisions.

import { Cancelled, getJSON, sendJSON, thumbnailURL } from "./api.js";
import { badge, el, fmt, reviewMark } from "./ui.js";

const $ = (id) => document.getElementById(id);
const QUEUE_SIZE = 60;
const REVIEWED_SIZE = 12;

export function createReview({ model, onOpen, onReviewed }) {
  async function load() {
    const base = { model: model() };
    const [queue, reviewed] = await Promise.all([
      getJSON(`/v1/inspections?${new URLSearchParams({ ...base, verdict: "review", reviewed: false, limit: QUEUE_SIZE })}`),
      getJSON(`/v1/inspections?${new URLSearchParams({ ...base, reviewed: true, limit: REVIEWED_SIZE })}`),
    ]);
    $("queue").replaceChildren(...queue.items.map(card));
    if (!queue.items.length) $("queue").append(el("li", { class: "empty" }, "Nothing waiting. ✓"));
    $("reviewed").replaceChildren(...reviewed.items.map(card));
  }

  function card(inspection) {
    const img = el("img", { alt: "", width: 160, height: 160 });
    thumbnailURL(inspection.id, 320).then((url) => { img.src = url; }, () => {});
    const note = el("input", { name: "note", placeholder: "note (optional)", maxlength: 2000, autocomplete: "off",
      "aria-label": "Note" });
    const error = el("p", { class: "form-error", role: "alert" });
    const decide = async (verdict) => {
      error.textContent = "";
      const operator = localStorage.getItem("inspector.operatorName") || null;
      try {
        onReviewed(await sendJSON("POST", `/v1/inspections/${inspection.id}/review`,
          { verdict, note: note.value.trim(), operator }, "Marking a part good or defect needs the operator key."));
      } catch (err) {
        error.textContent = err instanceof Cancelled ? "Not saved: the operator key is needed." : err.message;
      }
    };
    return el("li", { class: "card", "data-id": inspection.id },
      el("button", { type: "button", class: "thumb", onclick: () => onOpen(inspection.id),
        "aria-label": "Open details" }, img),
      el("div", { class: "card-body" },
        el("div", { class: "card-head" }, badge(inspection), reviewMark(inspection.review)),
        el("div", { class: "card-facts" },
          `${fmt.times(inspection.normalized_score)} threshold · ${fmt.time(inspection.created)}`,
          el("br"), `Part ${inspection.part_id || "–"}`),
        inspection.review ? el("p", { class: "muted" }, inspection.review.note || "") : [
          note,
          el("div", { class: "decide" },
            el("button", { type: "button", class: "good", onclick: () => decide("good") }, "✓ Good"),
            el("button", { type: "button", class: "defect", onclick: () => decide("defect") }, "✗ Defect")),
          error,
        ]));
  }

  return { load };
}
