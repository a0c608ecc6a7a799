// The threshold view: a histogram of recent raw scores with the active threshold and review band, a preview
// of any other calibration of the model, and switching the active one (operator key and confirmation).

import { AuthError, authRequired, getJSON, sendWithKey } from "./api.js";
import { el, fmt, svg } from "./ui.js";

const $ = (id) => document.getElementById(id);
const W = 800, H = 420, PAD = { left: 84, right: 20, top: 44, bottom: 74 };
const BINS = 40;

export function createThreshold({ model, onSwitched }) {
  let points = [];
  let calibrations = [];
  let selected = null;

  $("calibrations").addEventListener("click", (e) => {
    const item = e.target.closest("[data-name]");
    if (!item) return;
    selected = calibrations.find((c) => c.name === item.dataset.name);
    render();
  });
  $("activate").addEventListener("click", () => confirmSwitch());

  async function load() {
    const [scores, list] = await Promise.all([
      getJSON(`/v1/scores?${new URLSearchParams({ model: model(), limit: 500 })}`),
      getJSON(`/v1/models/${encodeURIComponent(model())}/calibrations`),
    ]);
    points = scores.points;
    calibrations = list;
    selected = calibrations.find((c) => c.name === selected?.name) || calibrations.find((c) => c.active) || null;
    $("hist-caption").textContent = `Last ${points.length} parts inspected by ${scores.model} version ${
      scores.model_version}; raw image scores, so every calibration's threshold can be drawn over them.`;
    render();
  }

  function render() {
    const active = calibrations.find((c) => c.active) || null;
    drawHistogram(points, active, selected !== active ? selected : null);
    $("calibrations").replaceChildren(...calibrations.map((c) => el("li", {},
      el("button", { type: "button", "data-name": c.name, "aria-pressed": String(c === selected),
        class: c.active ? "active" : "" },
      el("span", { class: "name" }, c.name, c.active ? el("span", { class: "tag" }, "● active") : null,
        c.stale ? el("span", { class: "tag stale" }, "stale") : null),
      el("span", { class: "muted" }, `${c.rule} · threshold ${fmt.score(c.image_threshold)}`,
        c.review_band ? ` · review ${c.review_band[0].toFixed(2)}×–${c.review_band[1].toFixed(2)}×` : " · no review band"),
      el("span", { class: "muted" }, counts(c) + (c.created ? ` · made ${c.created.slice(0, 10)}` : ""))))));
    $("activate").disabled = !selected || selected.active || selected.stale;
    $("activate").textContent = selected && !selected.active ? `Make “${selected.name}” active…` : "Make active…";
  }

  function judge(score, c) {
    const n = score / c.image_threshold;
    const [low, high] = c.review_band || [1, 1];
    if (c.review_band) return n < low ? "pass" : n > high ? "fail" : "review";
    return n >= 1 ? "fail" : "pass";
  }

  function counts(c) {
    const k = { pass: 0, review: 0, fail: 0 };
    for (const p of points) k[judge(p.score, c)] += 1;
    return `on these: ✓ ${k.pass} · ? ${k.review} · ✗ ${k.fail}`;
  }

  function drawHistogram(points, active, preview) {
    const target = $("histogram");
    const scores = points.map((p) => p.score);
    const marks = [active, preview].filter(Boolean).flatMap((c) => {
      const [low, high] = c.review_band || [1, 1];
      return [c.image_threshold * low, c.image_threshold * high];
    });
    const all = [...scores, ...marks];
    if (!all.length) {
      target.replaceChildren(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" },
        "No scores yet for this model version"));
      $("hist-legend").textContent = "";
      return;
    }
    let lo = Math.min(...all), hi = Math.max(...all);
    const span = hi - lo || Math.abs(hi) || 1;
    lo -= span * 0.05;
    hi += span * 0.05;
    const width = (hi - lo) / BINS;
    const bins = Array.from({ length: BINS }, () => ({ pass: 0, review: 0, fail: 0 }));
    for (const s of scores) {
      const b = bins[Math.min(BINS - 1, Math.floor((s - lo) / width))];
      b[active ? judge(s, active) : "pass"] += 1;
    }
    const peak = Math.max(1, ...bins.map((b) => b.pass + b.review + b.fail));
    const x = (v) => PAD.left + ((v - lo) / (hi - lo)) * (W - PAD.left - PAD.right);
    const y = (n) => H - PAD.bottom - (n / peak) * (H - PAD.top - PAD.bottom);
    const parts = [];

    for (const [c, cls] of [[active, "band"], [preview, "band preview"]]) {
      if (!c?.review_band) continue;
      const [low, high] = c.review_band.map((f) => f * c.image_threshold);
      parts.push(svg("rect", { class: cls, x: x(low), y: PAD.top, width: x(high) - x(low), height: H - PAD.top - PAD.bottom }));
    }
    bins.forEach((b, i) => {
      let base = 0;
      for (const v of ["pass", "review", "fail"]) {
        if (!b[v]) continue;
        parts.push(svg("rect", { class: `bar ${v}`, x: x(lo + i * width) + 1, width: Math.max(1, x(lo + width) - x(lo) - 2),
          y: y(base + b[v]), height: y(base) - y(base + b[v]) }));
        base += b[v];
      }
    });
    // Axis with ticks.
    parts.push(svg("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom }));
    for (let i = 0; i <= 5; i++) {
      const v = lo + ((hi - lo) * i) / 5;
      parts.push(svg("text", { class: "axis-label", x: x(v), y: H - PAD.bottom + 18, "text-anchor": "middle" }, fmt.score(v)));
    }
    parts.push(svg("text", { class: "axis-label", x: PAD.left - 8, y: PAD.top + 4, "text-anchor": "end" }, String(peak)));
    parts.push(svg("text", { class: "axis-label", x: PAD.left - 8, y: H - PAD.bottom, "text-anchor": "end" }, "0"));
    // Operator reviews under the axis: circles good, crosses defect, so the marks differ in shape too.
    for (const p of points.filter((q) => q.review)) {
      const cx = x(p.score);
      const cy = H - PAD.bottom + 36;
      parts.push(p.review === "good"
        ? svg("circle", { class: "rug good", cx, cy, r: 5 })
        : svg("path", { class: "rug defect", d: `M${cx - 5} ${cy - 5}l10 10m0 -10l-10 10` }));
    }
    parts.push(svg("text", { class: "axis-label", x: PAD.left - 8, y: H - PAD.bottom + 40, "text-anchor": "end" }, "reviewed"));
    for (const [c, cls] of [[active, "active"], [preview, "preview"]]) {
      if (!c) continue;
      const tx = x(c.image_threshold);
      parts.push(svg("line", { class: `threshold ${cls}`, x1: tx, x2: tx, y1: PAD.top - 6, y2: H - PAD.bottom + 48 }));
      const label = `${cls === "active" ? "active" : "preview"}: ${c.name} ${fmt.score(c.image_threshold)}`;
      parts.push(svg("text", { class: `threshold-label ${cls}`, x: tx, y: cls === "active" ? PAD.top - 12 : H - 8,
        "text-anchor": tx > W * 0.7 ? "end" : tx < W * 0.3 ? "start" : "middle" }, label));
    }
    target.replaceChildren(...parts);
    $("hist-legend").textContent = active
      ? `Bars by the active calibration's verdict: green ✓ pass, amber ? review (shaded band), red ✗ fail. ` +
        `Below the axis: parts an operator marked good (○) or defect (✗).` +
        (preview ? ` Dashed: ${preview.name}'s threshold and review band, not active.` : "")
      : "No active calibration: scores are not judged.";
  }

  async function confirmSwitch() {
    const active = calibrations.find((c) => c.active);
    const target = selected;
    const dialog = $("confirm-dialog");
    const form = $("confirm-form");
    const error = form.querySelector(".form-error");
    $("confirm-text").textContent = `From now on every part of ${model()} is judged by “${target.name}” ` +
      `(threshold ${fmt.score(target.image_threshold)}) instead of ` +
      `${active ? `“${active.name}” (threshold ${fmt.score(active.image_threshold)})` : "no calibration"}. ` +
      `On the last ${points.length} parts it would give ${counts(target).replace("on these: ", "")}.`;
    form.querySelector(".key-field").hidden = !authRequired;
    form.key.required = authRequired;
    form.key.value = "";
    error.textContent = "";
    form.querySelector(".cancel").onclick = () => dialog.close();
    form.onsubmit = async (e) => {
      e.preventDefault();
      try {
        await sendWithKey("PUT", `/v1/models/${encodeURIComponent(model())}/calibration`, { name: target.name },
          form.key.value);
        dialog.close();
        onSwitched();
      } catch (err) {
        error.textContent = err instanceof AuthError
          ? (err.status === 403 ? "This needs the operator key." : "Wrong key: the calibration was not changed.")
          : `Not switched: ${err.message}`;
      }
    };
    dialog.showModal();
  }

  return { load };
}
