// Drift watch: the alert in the top bar on every view, and the Drift view (#/drift) with, per recipe, each
// statistic's rolling PSI against the 0.2 alarm line and the recent score and brightness against the band of
// their reference. Drawn here as SVG (no chart library: the page works air-gapped).
//
// Self-starting: polls GET /v1/drift every POLL_MS (the alarm must show whatever view is open; without the plots'
// series unless the view is shown) and draws the view when it is shown. The rule and the numbers come from the service (components/drift.py); nothing is computed here.

import { getJSON } from "./api.js";
import { el, svg } from "./ui.js";

const POLL_MS = 5000;
const W = 560;
const H = 170;
const PAD = { left: 46, right: 12, top: 12, bottom: 22 };
const NAMES = { score: "Pass score", brightness: "Brightness", contrast: "Contrast", sharpness: "Sharpness" };
const $ = (id) => document.getElementById(id);

let report = null;

const time = (unix) => new Date(unix * 1000).toLocaleTimeString([], { hour12: false });
const num = (v, digits = 3) => (v === null || v === undefined ? "–" : Number(v).toPrecision(digits));

const shown = () => location.hash.startsWith("#/drift");

async function refresh() {
  try {
    // the series (for the plots) only while the view is shown; the alert needs the alarm alone
    report = await getJSON(`/v1/drift?series=${shown()}`);
  } catch {
    return; // the connection indicator already says when the service is unreachable
  }
  renderAlert();
  if (shown()) renderView();
}

// ---- the alert, on every view ---------------------------------------------------------------------------------

function renderAlert() {
  const alarmed = report.recipes.filter((r) => r.alarm);
  const alert = $("drift-alert");
  alert.hidden = alarmed.length === 0;
  $("drift-flag").hidden = alarmed.length === 0;
  if (!alarmed.length) return;
  alert.replaceChildren(
    el("span", { class: "icon" }, "⚠"),
    `Drift: ${alarmed.map((r) => `${r.model} (${r.triggered_by.map((n) => NAMES[n] || n).join(", ")})`).join("; ")}`,
  );
  alert.title = "The images or pass scores no longer look like the reference. Open the Drift view.";
}

// ---- the view -------------------------------------------------------------------------------------------------

function renderView() {
  const box = $("drift");
  if (!report.recipes.length) {
    box.replaceChildren(el("p", { class: "muted" }, "No recipe is loaded."));
    return;
  }
  const rule = report.recipes[0].rule;
  $("drift-rule").textContent =
    `Each statistic is checked over its last ${rule.window} parts. It drifts when PSI > ${rule.psi_alarm} and a ` +
    `KS or rank-sum p-value < ${rule.alpha}; ${rule.raise_after} such checks in a row raise the alarm, ` +
    `${rule.clear_after} quiet ones clear it.`;
  box.replaceChildren(...report.recipes.map(recipeCard));
}

function recipeCard(recipe) {
  const stats = Object.values(recipe.statistics);
  const state = recipe.alarm
    ? el("p", { class: "drift-state", "data-alarm": "true", role: "alert" },
      el("span", { class: "icon" }, "⚠"),
      `Drift alarm since ${time(Date.parse(recipe.since) / 1000)}: `,
      recipe.triggered_by.map((n) => NAMES[n] || n).join(", "))
    : el("p", { class: "drift-state", "data-alarm": "false" }, el("span", { class: "icon" }, "✓"),
      "No drift", recipe.alarms_raised ? ` (alarms raised since load: ${recipe.alarms_raised})` : "");
  return el("article", { class: "drift-recipe", "data-recipe": recipe.model, "data-alarm": String(recipe.alarm) },
    el("header", {}, el("h3", {}, recipe.model), el("span", { class: "muted" }, `version ${recipe.model_version}`)),
    state,
    table(stats),
    el("div", { class: "drift-plots" },
      plot("PSI of the rolling window", psiSeries(stats), { line: recipe.rule.psi_alarm, lineLabel: "alarm" }),
      ...["score", "brightness"].filter((n) => recipe.statistics[n]).map((n) => valuePlot(recipe.statistics[n]))));
}

function table(stats) {
  return el("table", { class: "drift-table" },
    el("thead", {}, el("tr", {}, ...["Statistic", "PSI", "KS p", "Rank p", "Window", "Reference", "State"]
      .map((h) => el("th", {}, h)))),
    el("tbody", {}, ...stats.map((s) => el("tr", { "data-statistic": s.name, "data-drifting": String(s.drifting) },
      el("td", {}, el("i", { class: "swatch", "data-statistic": s.name }), NAMES[s.name] || s.name),
      el("td", { class: "num" }, num(s.psi)),
      el("td", { class: "num" }, num(s.ks_p, 2)),
      el("td", { class: "num" }, num(s.rank_p, 2)),
      el("td", { class: "num" }, String(s.window)),
      el("td", {}, s.reference_source),
      el("td", {}, s.drifting ? "⚠ drifting" : s.status)))));
}

function psiSeries(stats) {
  return stats.filter((s) => s.checks.length).map((s) => ({
    key: s.name, name: NAMES[s.name] || s.name, points: s.checks.map(([t, psi]) => [t, psi]),
  }));
}

function valuePlot(stat) {
  const band = stat.reference_band;
  const title = `${NAMES[stat.name]}: recent parts against the reference`;
  const series = [{ key: stat.name, name: NAMES[stat.name], points: stat.values }];
  return plot(title, series, band ? { band: [band[0], band[2]], line: band[1], lineLabel: "median" } : {});
}

// One SVG chart: time on x, value on y; an optional reference band (5-95 %) and a horizontal line.
function plot(title, series, { band = null, line = null, lineLabel = "" } = {}) {
  const points = series.flatMap((s) => s.points);
  const chart = svg("svg", { class: "drift-plot", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  if (!points.length) {
    chart.append(svg("text", { x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle" }, "no checks yet"));
    return el("figure", {}, chart, el("figcaption", {}, title));
  }
  const xs = points.map((p) => p[0]);
  const ys = [...points.map((p) => p[1]), ...(band || []), ...(line !== null ? [line] : [])];
  const [x0, x1] = [Math.min(...xs), Math.max(...xs) || 1];
  let [y0, y1] = [Math.min(0, ...ys), Math.max(...ys)];
  if (y1 === y0) y1 = y0 + 1;
  y1 += (y1 - y0) * 0.08;
  const px = (x) => PAD.left + ((x - x0) / (x1 - x0 || 1)) * (W - PAD.left - PAD.right);
  const py = (y) => H - PAD.bottom - ((y - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
  if (band) {
    chart.append(svg("rect", { class: "band", x: PAD.left, width: W - PAD.left - PAD.right,
      y: py(band[1]), height: Math.max(1, py(band[0]) - py(band[1])) }));
  }
  for (const y of [y0, (y0 + y1) / 2, y1]) {
    chart.append(svg("text", { x: PAD.left - 6, y: py(y) + 4, "text-anchor": "end", class: "tick" }, num(y, 3)));
  }
  chart.append(svg("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: py(y0), y2: py(y0) }));
  chart.append(svg("text", { x: PAD.left, y: H - 6, class: "tick" }, time(x0)),
    svg("text", { x: W - PAD.right, y: H - 6, class: "tick", "text-anchor": "end" }, time(x1)));
  if (line !== null) {
    chart.append(svg("line", { class: "limit", x1: PAD.left, x2: W - PAD.right, y1: py(line), y2: py(line) }),
      svg("text", { x: W - PAD.right - 4, y: py(line) - 4, class: "limit-label", "text-anchor": "end" },
        `${lineLabel} ${num(line, 3)}`));
  }
  for (const s of series) {
    const d = s.points.map(([x, y], i) => `${i ? "L" : "M"}${px(x).toFixed(1)},${py(y).toFixed(1)}`).join("");
    chart.append(svg("path", { class: "series", d, "data-statistic": s.key }));
  }
  const legend = el("span", { class: "drift-legend" }, ...series.map((s) =>
    el("span", {}, el("i", { class: "swatch", "data-statistic": s.key }), s.name)));
  return el("figure", {}, chart, el("figcaption", {}, title, " ", legend));
}

// ---- start ------------------------------------------------------------------------------------------------------

window.addEventListener("hashchange", () => { if (shown()) refresh(); });
refresh();
setInterval(refresh, POLL_MS);
