// The live view: the newest part with its heatmap and regions, the verdict banner, the score gauge, the facts
// and the counters.

import { decodedURL } from "./api.js";
import { VERDICTS, drawRegions, el, fact, fmt, icon, svg, verdictOf } from "./ui.js";

const $ = (id) => document.getElementById(id);
const GAUGE_MAX = 2; // the gauge spans 0 to twice the threshold; a higher score pins the needle

export function createLive({ onOpen }) {
  const part = $("live-part");
  const base = part.querySelector("img.base");
  const heat = part.querySelector("img.heat");
  const regions = part.querySelector("svg.regions");
  const heatOn = $("heat-on");
  const opacity = $("heat-opacity");
  const regionsOn = $("regions-on");
  let current = null;
  let newest = ""; // id of the newest part asked for: ids sort by time, so an older one never replaces it

  // Overlay settings survive a reload: the operator sets them once for the station.
  const saved = JSON.parse(localStorage.getItem("inspector.overlay") || "{}");
  heatOn.checked = saved.heat ?? true;
  opacity.value = saved.opacity ?? 100; // the service's overlay is already translucent
  regionsOn.checked = saved.regions ?? true;
  const applyOverlay = () => {
    heat.hidden = !heatOn.checked;
    heat.style.opacity = opacity.value / 100;
    regions.hidden = !regionsOn.checked;
    localStorage.setItem("inspector.overlay", JSON.stringify(
      { heat: heatOn.checked, opacity: Number(opacity.value), regions: regionsOn.checked }));
  };
  for (const input of [heatOn, opacity, regionsOn]) input.addEventListener("input", applyOverlay);
  document.addEventListener("keydown", (e) => {
    if (e.key.toLowerCase() === "h" && !e.target.closest("input, textarea, select, dialog")) {
      heatOn.checked = !heatOn.checked;
      applyOverlay();
    }
  });
  applyOverlay();
  $("live-open").addEventListener("click", () => current && onOpen(current.id));

  // Image and heatmap are swapped in together with the text, so the banner never describes another part than
  // the picture; a newer part arriving meanwhile wins.
  async function show(inspection) {
    if (inspection.id < newest) return;
    newest = inspection.id;
    const [image, overlay] = await Promise.allSettled([
      decodedURL(inspection.image_url), decodedURL(inspection.heatmap_url)]);
    if (inspection.id !== newest) return;
    current = inspection;
    base.src = image.value || "";
    heat.src = overlay.value || "";
    part.dataset.id = inspection.id;
    part.classList.add("has-part");
    drawRegions(regions, inspection);
    render(inspection);
  }

  function render(inspection) {
    const v = verdictOf(inspection);
    const banner = $("live-banner");
    banner.dataset.verdict = v;
    banner.replaceChildren(el("span", { class: "icon" }, icon(v, 72)), el("span", { class: "word" }, VERDICTS[v].word));
    const reviewed = $("live-reviewed");
    reviewed.hidden = !inspection.review;
    if (inspection.review) {
      const r = inspection.review;
      reviewed.textContent = `Operator: ${r.verdict === "good" ? "✓ good" : "✗ defect"}${r.note ? ` – ${r.note}` : ""}`;
    }
    drawGauge($("live-gauge"), inspection);
    const facts = $("live-facts");
    facts.replaceChildren();
    fact(facts, "Part", inspection.part_id || "–");
    fact(facts, "Time", fmt.time(inspection.created));
    fact(facts, "Model", inspection.model);
    fact(facts, "Latency", fmt.ms(inspection.timings_ms.total));
    fact(facts, "Regions", String(inspection.regions.length));
    fact(facts, "Score", fmt.score(inspection.score));
    if (inspection.recorded === false) fact(facts, "Record", "Not recorded: the store's disk is full");
    $("live-open").disabled = false;
  }

  return {
    show,
    // Another model was chosen: its parts are not newer or older than this one's, just different.
    clear() {
      current = null;
      newest = "";
      part.classList.remove("has-part");
      base.removeAttribute("src");
      heat.removeAttribute("src");
      regions.replaceChildren();
      const banner = $("live-banner");
      banner.dataset.verdict = "waiting";
      banner.replaceChildren(el("span", { class: "icon" }, icon("waiting", 72)), el("span", { class: "word" }, "Waiting"));
      $("live-gauge").replaceChildren();
      $("live-facts").replaceChildren();
      $("live-reviewed").hidden = true;
      $("live-open").disabled = true;
    },
    // A review of the part on screen (from this page or another) updates the banner's note.
    update(inspection) {
      if (current && current.id === inspection.id) {
        current = inspection;
        render(inspection);
      }
    },
    get current() { return current; },
  };
}

// The score as a multiple of the threshold on a half-dial: pass, review band and fail zones, needle, value.
function drawGauge(target, inspection) {
  const cx = 120, cy = 128, r = 92;
  const at = (v) => {
    const a = Math.PI * (1 - Math.min(Math.max(v, 0), GAUGE_MAX) / GAUGE_MAX);
    return [cx + r * Math.cos(a), cy - r * Math.sin(a)];
  };
  const arc = (from, to, cls) => {
    const [x0, y0] = at(from), [x1, y1] = at(to);
    return svg("path", { class: `zone ${cls}`, d: `M${x0} ${y0}A${r} ${r} 0 0 1 ${x1} ${y1}` });
  };
  const n = inspection.normalized_score;
  const band = inspection.calibrated ? bandOf(inspection) : null;
  const parts = [];
  if (band) {
    const [low, high] = band;
    parts.push(arc(0, low, "pass"));
    if (high > low) parts.push(arc(low, high, "review"));
    parts.push(arc(high, GAUGE_MAX, "fail"));
    parts.push(svg("line", { class: "tick", x1: cx, y1: cy - r - 11, x2: cx, y2: cy - r - 17 }));
    parts.push(svg("text", { class: "tick-label", x: cx, y: cy - r - 20, "text-anchor": "middle" }, "1× threshold"));
  } else {
    parts.push(arc(0, GAUGE_MAX, "none"));
  }
  parts.push(svg("text", { class: "end-label", x: cx - r, y: cy + 18, "text-anchor": "middle" }, "0"));
  parts.push(svg("text", { class: "end-label", x: cx + r, y: cy + 18, "text-anchor": "middle" }, `${GAUGE_MAX}×`));
  if (n !== null && n !== undefined) {
    // A pointer across the dial rather than a needle from the centre, which keeps the centre free for the value.
    const a = Math.PI * (1 - Math.min(Math.max(n, 0), GAUGE_MAX) / GAUGE_MAX);
    const along = (d) => [cx + d * Math.cos(a), cy - d * Math.sin(a)];
    const [x0, y0] = along(r - 24), [x1, y1] = along(r + 13);
    parts.push(svg("line", { class: "pointer-halo", x1: x0, y1: y0, x2: x1, y2: y1 }));
    parts.push(svg("line", { class: "pointer", x1: x0, y1: y0, x2: x1, y2: y1 }));
    parts.push(svg("text", { class: "value", x: cx, y: cy - 32, "text-anchor": "middle" }, fmt.times(n)));
    parts.push(svg("text", { class: "value-label", x: cx, y: cy - 14, "text-anchor": "middle" },
      n > GAUGE_MAX ? "of threshold (off scale)" : "of threshold"));
  } else {
    parts.push(svg("text", { class: "value small", x: cx, y: cy - 32, "text-anchor": "middle" },
      fmt.score(inspection.score)));
    parts.push(svg("text", { class: "value-label", x: cx, y: cy - 14, "text-anchor": "middle" },
      "raw score · no threshold"));
  }
  target.setAttribute("aria-label", n === null ? `Score ${fmt.score(inspection.score)}, not calibrated`
    : `Score ${fmt.times(n)} the threshold`);
  target.replaceChildren(...parts);
}

// The review band a record was judged with, in multiples of its threshold: a record names its calibration,
// and the model's calibration list (/v1/models/{name}/calibrations) has each one's band.
const bands = new Map();
export function setBands(model, calibrations) {
  for (const c of calibrations) bands.set(`${model}/${c.name}`, c.review_band || [1, 1]);
}

function bandOf(inspection) {
  return bands.get(`${inspection.model}/${inspection.calibration}`) || [1, 1];
}

// Counters for the period: big numbers with icon and word, shares, throughput.
export function renderCounters(summary) {
  const total = summary.inspected;
  const share = (n) => (total ? `${((100 * n) / total).toFixed(1)} %` : "");
  const tile = (cls, label, value, sub) => el("div", { class: `tile ${cls}` },
    el("span", { class: "label" }, label), el("span", { class: "number" }, fmt.int(value)),
    el("span", { class: "sub" }, sub));
  const v = summary.verdicts;
  $("counters").replaceChildren(
    tile("total", "Inspected", total, `${summary.per_minute.toFixed(1)} / min` +
      (v.none ? ` · ${fmt.int(v.none)} not judged` : "")),
    tile("pass", "✓ Pass", v.pass, share(v.pass)),
    tile("fail", "✗ Fail", v.fail, share(v.fail)),
    tile("review", "? Review", v.review, `${summary.review_open} open`),
  );
}
