// Small shared pieces: element building, verdict words and icons, number and time formats, region boxes.

const SVG_NS = "http://www.w3.org/2000/svg";

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "style") node.style.cssText = value; // CSSOM: the page's CSP refuses style attributes
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "style") node.style.cssText = value;
    else node.setAttribute(name, value);
  }
  node.append(...children.flat());
  return node;
}

// Colour is never the only signal: every verdict also has a word and an icon shape.
export const VERDICTS = {
  pass: { word: "Pass", path: "M5 12.5l4.5 4.5L19 7.5" },
  fail: { word: "Fail", path: "M6.5 6.5l11 11M17.5 6.5l-11 11" },
  review: { word: "Review", path: "M8.5 9a3.5 3.5 0 1 1 5 3.2c-1 .5-1.5 1.2-1.5 2.3V15.5M12 19v.01" },
  none: { word: "Not judged", path: "M6 12h12" },
  waiting: { word: "Waiting", path: "M6 12h.01M12 12h.01M18 12h.01" },
};

export const REVIEWS = { good: { word: "Good", icon: "✓" }, defect: { word: "Defect", icon: "✗" } };

export function verdictOf(inspection) {
  return inspection ? inspection.verdict || "none" : "waiting";
}

export function icon(verdict, size = 24) {
  return svg("svg", { class: "icon", viewBox: "0 0 24 24", width: size, height: size, "aria-hidden": "true" },
    svg("path", { d: VERDICTS[verdict].path }));
}

// "✓ Pass" as a small badge; with a review, the operator's word follows.
export function badge(inspection) {
  const v = verdictOf(inspection);
  return el("span", { class: "badge", "data-verdict": v }, icon(v, 16), VERDICTS[v].word);
}

export function reviewMark(review) {
  if (!review) return null;
  const r = REVIEWS[review.verdict];
  return el("span", { class: "review-mark", "data-review": review.verdict, title: review.note || "" },
    `✎ ${r.word}`);
}

export const fmt = {
  // 24-hour clock, as shift plans and line logs use.
  time: (iso) => new Date(iso).toLocaleTimeString([], { hourCycle: "h23", hour: "2-digit", minute: "2-digit",
    second: "2-digit" }),
  dateTime: (iso) => new Date(iso).toLocaleString([], { hourCycle: "h23", dateStyle: "short", timeStyle: "medium" }),
  ms: (v) => (v >= 100 ? v.toFixed(0) : v.toFixed(1)) + " ms",
  times: (v) => (v === null || v === undefined ? "–" : `${v.toFixed(2)}×`),
  score: (v) => (v === null || v === undefined ? "–" : v.toPrecision(4)),
  int: (v) => v.toLocaleString(),
};

export function fact(dl, label, value) {
  dl.append(el("dt", {}, label), el("dd", {}, value ?? "–"));
}

// Region boxes in image pixels. The SVG's viewBox is the image and it scales like the <img> under it
// (object-fit: contain is xMidYMid meet), so boxes, image and heatmap line up at any size.
export function drawRegions(target, inspection, limit = 20) {
  target.setAttribute("viewBox", `0 0 ${inspection.width} ${inspection.height}`);
  target.setAttribute("preserveAspectRatio", "xMidYMid meet");
  target.replaceChildren(...inspection.regions.slice(0, limit).map((r, i) => {
    const box = { x: r.x, y: r.y, width: r.width, height: r.height, "vector-effect": "non-scaling-stroke" };
    return svg("g", {},
      svg("rect", { ...box, class: "halo" }),
      svg("rect", { ...box, class: "box" }),
      svg("title", {}, `Region ${i + 1}: ${r.width}×${r.height} px, peak ${fmt.score(r.peak)}`));
  }));
}
