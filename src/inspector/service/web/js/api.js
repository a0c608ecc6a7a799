// The service's HTTP API as the page uses it: keys, JSON, images and the live event stream.
//
// Keys travel in the X-API-Key header, never in a URL, so images are fetched as blobs rather than given to
// <img src> directly, and the event stream is read with fetch (EventSource cannot send headers).

const KEY_STORE = "inspector.operatorKey";

export class AuthError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status; // 401: no or wrong key; 403: a key without the operator role
  }
}

export class Cancelled extends Error {}

let askKey = async () => { throw new Cancelled("no key dialog"); };
export let authRequired = true; // false once a request without any key succeeded: the service has no keys

export function onKeyNeeded(dialog) {
  askKey = dialog;
}

function storedKey() {
  return sessionStorage.getItem(KEY_STORE);
}

function storeKey(key) {
  sessionStorage.setItem(KEY_STORE, key);
}

async function send(path, { method = "GET", body, key = storedKey() } = {}) {
  const headers = {};
  if (key) headers["X-API-Key"] = key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.ok) return response;
  const detail = await response.json().then((b) => b.detail, () => response.statusText);
  if (response.status === 401 || response.status === 403) throw new AuthError(response.status, detail);
  throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
}

// Runs `attempt(key)` and, while the service refuses the key, asks the operator for one (Cancelled if they
// give up). The key is kept for the browser tab's session only (sessionStorage), never on disk. A request refused
// for a key that another request has since replaced tries the new key before asking: at start-up several views
// ask at once, and one answered after the dialog closed must not open a second one nobody is there to fill.
async function withKey(attempt, reason) {
  for (;;) {
    const tried = storedKey();
    let error;
    try {
      return await attempt(tried);
    } catch (e) {
      if (!(e instanceof AuthError)) throw e;
      error = e;
    }
    if (storedKey() !== tried) continue;
    const why = error.status === 403 ? "This needs the operator key, not the camera key." : reason;
    const key = await askKey(why, storedKey() ? error.message : "");
    storeKey(key);
  }
}

// Whether reads need a key: the one request the page makes without its stored key.
export async function probeAuth() {
  try {
    await send("/v1/models", { key: null });
    authRequired = false;
  } catch (e) {
    if (!(e instanceof AuthError)) throw e;
  }
}

const UNLOCK = "The service shows inspections only with a key. Enter the operator key.";

export async function getJSON(path) {
  return withKey((key) => send(path, { key }), UNLOCK).then((r) => r.json());
}

// A file the service makes (the audit CSV), as a Blob: fetched with the key, so it never goes in a URL.
export async function getBlob(path) {
  return withKey((key) => send(path, { key }), UNLOCK).then((r) => r.blob());
}

export async function sendJSON(method, path, body, reason) {
  return withKey((key) => send(path, { method, body, key }), reason).then((r) => r.json());
}

// A calibration switch asks for the key again in its confirmation, so it is sent as typed, not the stored one.
export async function sendWithKey(method, path, body, key) {
  const response = await send(path, { method, body, key });
  if (key) storeKey(key);
  return response.json();
}

// ---- images ------------------------------------------------------------------------------------------------

// Object URLs of pictures, newest used last. A record's pictures never change, so a URL stays valid as long
// as it is kept; full pictures can be megapixels, so few of those are kept, and many small thumbnails.
class PictureCache {
  constructor(size) {
    this.size = size;
    this.urls = new Map();
  }

  get(path) {
    let url = this.urls.get(path);
    if (url) {
      this.urls.delete(path); // re-inserted below: the Map's order is the use order
    } else {
      url = withKey((key) => send(path, { key }), UNLOCK)
        .then((r) => r.blob())
        .then((blob) => URL.createObjectURL(blob));
      url.catch(() => this.urls.delete(path));
    }
    this.urls.set(path, url);
    while (this.urls.size > this.size) {
      const [oldest, old] = this.urls.entries().next().value;
      this.urls.delete(oldest);
      old.then((u) => URL.revokeObjectURL(u), () => {});
    }
    return url;
  }
}

const pictures = new PictureCache(12);
const thumbnails = new PictureCache(300);

export const imageURL = (path) => pictures.get(path);
export const thumbnailURL = (id, size) => thumbnails.get(`/v1/inspections/${id}/thumbnail.jpg?size=${size}`);

// A service picture's object URL once the browser has decoded it, so several can be swapped in at once.
export async function decodedURL(path) {
  const url = await imageURL(path);
  const probe = new Image();
  probe.src = url;
  await probe.decode().catch(() => {});
  return url;
}

// ---- live events -------------------------------------------------------------------------------------------

// Reads the server-sent event stream and calls `onEvent(kind, data)`; reconnects with backoff after a drop.
// `onState` hears "live", "reconnecting" or "locked".
export function listen(onEvent, onState) {
  let delay = 1000;
  const connect = async () => {
    try {
      const response = await withKey((key) => send("/v1/events", { key }), UNLOCK);
      onState("live");
      delay = 1000;
      await readEvents(response.body, onEvent);
    } catch (e) {
      if (e instanceof Cancelled) {
        onState("locked");
        return;
      }
    }
    onState("reconnecting");
    setTimeout(connect, delay);
    delay = Math.min(delay * 2, 10000);
  };
  connect();
}

async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) kind = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(kind, JSON.parse(data.join("\n")));
    }
  }
}
