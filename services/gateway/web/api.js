// darkroom's HTTP API as the pages use it: JSON calls with a bearer key, OpenAI's error
// envelope turned into an ApiError, and server-sent events read from a fetch response.
// Nothing here touches the DOM, so both pages share it.

/** An error answer of the API: `{"error": {"message", "type", "param", "code"}}`. */
export class ApiError extends Error {
  constructor(status, error, headers) {
    super(error.message || `The server answered ${status}.`);
    this.status = status;
    this.code = error.code || null;
    this.param = error.param || null;
    this.type = error.type || null;
    const retry = headers ? Number(headers.get("retry-after")) : NaN;
    this.retryAfterS = Number.isFinite(retry) && retry >= 0 ? retry : null;
  }
}

/** A network failure, said in plain words. */
export class OfflineError extends Error {
  constructor() {
    super("The server cannot be reached. Check your connection; nothing was lost.");
    this.status = 0;
    this.code = "offline";
  }
}

async function errorOf(response) {
  let error = {};
  try {
    const body = await response.json();
    error = body && body.error ? body.error : {};
  } catch {
    error = {};
  }
  return new ApiError(response.status, error, response.headers);
}

/**
 * Send a request and answer the raw response when it succeeded (2xx).
 * @param {string} path - A path on this origin ("/v1/...").
 * @param {object} options - key (bearer token), method, json, form (FormData), headers, signal.
 * @returns {Promise<Response>}
 * @throws {ApiError|OfflineError}
 */
export async function send(path, { key, method, json, form, headers = {}, signal } = {}) {
  const init = { method: method || (json || form ? "POST" : "GET"), headers: { ...headers }, signal };
  if (key) init.headers.authorization = `Bearer ${key}`;
  if (json !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form) {
    init.body = form;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (exc) {
    if (exc && exc.name === "AbortError") throw exc;
    throw new OfflineError();
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

/** Like `send`, and answer the parsed JSON body. */
export async function call(path, options) {
  const response = await send(path, options);
  return response.status === 204 ? null : response.json();
}

/**
 * The events of a server-sent-events response, as `{event, data}` with `data` parsed.
 * @param {Response} response
 */
export async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of frame.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

/** A fresh random id (Idempotency-Key of a request the page may send again). */
export function newKey() {
  return crypto.randomUUID();
}

/** "3 s", "2 min 5 s": a duration for people. */
export function seconds(s) {
  const total = Math.max(0, Math.ceil(s));
  if (total < 60) return `${total} s`;
  const minutes = Math.floor(total / 60);
  return total % 60 ? `${minutes} min ${total % 60} s` : `${minutes} min`;
}
