// The line links in the top bar: one pill per PLC server, broker or webhook, with a word (not only a colour)
// for its state and the sink's own one-line detail as the tooltip. Polled: a link's state changes rarely.

import { getJSON } from "./api.js";
import { el } from "./ui.js";

const POLL_MS = 5000;
const KINDS = { modbus: "Modbus", opcua: "OPC UA", mqtt: "MQTT", webhook: "Webhook" };

export function createLinks(box) {
  async function refresh() {
    let links;
    try {
      links = await getJSON("/v1/links");
    } catch {
      return; // the connection indicator already says the service is unreachable
    }
    box.hidden = links.length === 0;
    box.replaceChildren(
      ...links.map((link) =>
        el(
          "span",
          { class: "link", "data-up": String(link.up), title: `${link.name}: ${link.detail}` },
          el("i"),
          `${KINDS[link.kind] || link.kind} ${link.up ? "up" : "down"}`,
        ),
      ),
    );
  }

  refresh();
  setInterval(refresh, POLL_MS);
  return { refresh };
}
