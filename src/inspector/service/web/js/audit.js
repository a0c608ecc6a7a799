// The audit log: every change that altered what the line is told, newest first, with older pages on request
// and the whole log (or one kind of change) as a CSV download. Needs the operator key.

import { getBlob, getJSON } from "./api.js";
import { el, fmt } from "./ui.js";

const $ = (id) => document.getElementById(id);
const PAGE = 100;
const KINDS = {
  model_load: "Model loaded",
  model_reload: "Model reloaded",
  model_unload: "Model unloaded",
  model_shadow: "Shadow version",
  model_promote: "Promoted",
  model_rollback: "Rolled back",
  refit: "Re-fit",
  calibration: "Calibration",
  review_band: "Review band",
  recipe: "Recipe",
  review: "Review",
  key: "Key",
};

export function createAudit() {
  let cursor = null;

  $("audit-kind").addEventListener("change", () => load());
  $("audit-more").addEventListener("click", () => more());
  $("audit-csv").addEventListener("click", () => download());

  const query = (extra = {}) => {
    const q = new URLSearchParams(extra);
    if ($("audit-kind").value) q.set("kind", $("audit-kind").value);
    return q;
  };

  async function fetchPage(after) {
    $("audit-error").textContent = "";
    const page = await getJSON(`/v1/audit?${query({ limit: PAGE, ...(after ? { cursor: after } : {}) })}`);
    cursor = page.next_cursor;
    $("audit-more").hidden = cursor === null;
    return page.items.map(row);
  }

  async function load() {
    const rows = await fetchPage(null);
    $("audit-rows").replaceChildren(...rows);
    if (!rows.length) $("audit-rows").append(el("tr", {}, el("td", { class: "empty", colspan: 6 }, "No changes yet")));
  }

  async function more() {
    $("audit-rows").append(...(await fetchPage(cursor)));
  }

  function row(entry) {
    const who = entry.operator ? `${entry.user} (${entry.operator})` : entry.user;
    const kind = KINDS[entry.kind] || entry.kind;
    const what = entry.subject ? `${kind} · ${entry.subject}` : kind;
    return el("tr", { "data-id": entry.id, "data-kind": entry.kind },
      el("td", { class: "when", title: entry.created }, fmt.dateTime(entry.created)),
      el("td", {}, who),
      el("td", {}, what),
      el("td", {}, entry.model ?? "–"),
      el("td", { class: "change" }, el("span", { class: "old" }, entry.old ?? "–"), " → ",
        el("span", { class: "new" }, entry.new ?? "–")),
      el("td", {}, entry.reason || "–"));
  }

  async function download() {
    $("audit-error").textContent = "";
    try {
      const url = URL.createObjectURL(await getBlob(`/v1/audit.csv?${query()}`));
      const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\..*/, "Z");
      const link = el("a", { href: url, download: `audit-${stamp}.csv`, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (err) {
      $("audit-error").textContent = `Not downloaded: ${err.message}`;
    }
  }

  return { load };
}
