// The history strip: the last parts as thumbnails, newest first, filterable by verdict; a click opens details.

import { getJSON, thumbnailURL } from "./api.js";
import { badge, el, fmt, reviewMark, verdictOf } from "./ui.js";

const SIZE = 40; // thumbnails kept in the strip

export function createHistory({ model, onOpen }) {
  const strip = document.getElementById("history-strip");
  const chips = document.getElementById("history-filter");
  let filter = "";
  let items = [];

  chips.addEventListener("click", (e) => {
    const chip = e.target.closest("button[data-filter]");
    if (!chip) return;
    filter = chip.dataset.filter;
    for (const b of chips.querySelectorAll("button")) b.setAttribute("aria-pressed", String(b === chip));
    load();
  });

  async function load() {
    const query = new URLSearchParams({ limit: SIZE, model: model() });
    if (filter) query.set("verdict", filter);
    const loaded = (await getJSON(`/v1/inspections?${query}`)).items;
    const newer = items.filter((i) => i.id > (loaded[0]?.id ?? "") && i.model === model());  // arrived meanwhile
    items = [...newer, ...loaded].slice(0, SIZE);
    render();
  }

  function thumb(inspection) {
    const img = el("img", { alt: "", width: 96, height: 96, loading: "lazy" });
    thumbnailURL(inspection.id, 192).then((url) => { img.src = url; }, () => {});
    return el("li", { "data-id": inspection.id, "data-verdict": verdictOf(inspection) },
      el("button", { type: "button", onclick: () => onOpen(inspection.id),
        "aria-label": `Part ${inspection.part_id || inspection.id}, ${verdictOf(inspection)}` },
      img, badge(inspection), el("span", { class: "when" }, fmt.time(inspection.created)),
      reviewMark(inspection.review)));
  }

  function render() {
    strip.replaceChildren(...items.map(thumb));
    if (!items.length) strip.append(el("li", { class: "empty" }, "No parts yet"));
  }

  return {
    load,
    add(inspection) {
      if (inspection.model !== model() || (filter && inspection.verdict !== filter)) return;
      items = [inspection, ...items.filter((i) => i.id !== inspection.id)].slice(0, SIZE);
      strip.querySelector(".empty")?.remove();
      strip.prepend(thumb(inspection));
      while (strip.children.length > SIZE) strip.lastElementChild.remove();
    },
    update(inspection) {
      const index = items.findIndex((i) => i.id === inspection.id);
      if (index < 0) return;
      items[index] = inspection;
      strip.querySelector(`[data-id="${inspection.id}"]`)?.replaceWith(thumb(inspection));
    },
    markCurrent(id) {
      for (const li of strip.children) li.classList.toggle("current", li.dataset.id === id);
    },
  };
}
