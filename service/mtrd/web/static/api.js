// The API as the page calls it: fetch with the token the user entered (kept in this tab's
// session storage), and the event stream read from a streaming fetch.

import { SseParser } from "./sse.js";

const TOKEN_KEY = "mtrd-token";

/** Thrown when the API asks for a token (401): the page then asks the user for one. */
export class NeedsToken extends Error {}

/** An answer that is not what the page asked for; its message is the problem's detail. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

/** True once the user entered a token in this tab. */
export function hasToken() {
  return Boolean(sessionStorage.getItem(TOKEN_KEY));
}

function headers(extra) {
  const all = { ...extra };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) all.Authorization = `Bearer ${token}`;
  return all;
}

async function send(method, path, { body, accept = "application/json", signal } = {}) {
  const init = { method, headers: headers({ Accept: accept }), signal, cache: "no-store" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (response.status === 401) throw new NeedsToken("a token is needed");
  return response;
}

async function failure(response) {
  let detail = `${response.status} ${response.statusText}`;
  try {
    const problem = await response.json();
    const fields = (problem.errors || []).map((e) => `${e.field}: ${e.message}`).join("; ");
    detail = fields || problem.detail || problem.title || detail;
  } catch {
    // not a problem document: the status line says enough
  }
  return new ApiError(response.status, detail);
}

/** JSON of a call; null for a 404 when `missing` is allowed; throws ApiError otherwise. */
export async function call(method, path, { body, missing = false } = {}) {
  const response = await send(method, path, { body });
  if (missing && response.status === 404) return null;
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

/** The text (plain report or JSON) of a resource, as a string. */
export async function text(path, accept) {
  const response = await send("GET", path, { accept });
  if (!response.ok) throw await failure(response);
  return response.text();
}

/** Follow an event stream until `done`, resuming after the last event if the connection
 *  drops; calls onEvent(kind, data) for each. Stops early when `signal` aborts. */
export async function follow(path, onEvent, signal) {
  const parser = new SseParser();
  for (let attempt = 0; !signal.aborted; attempt += 1) {
    const extra = parser.lastId === null ? {} : { "Last-Event-ID": parser.lastId };
    let response;
    try {
      response = await fetch(path, { headers: headers({ Accept: "text/event-stream", ...extra }),
        signal, cache: "no-store" });
    } catch (error) {
      if (signal.aborted) return;
      await pause(Math.min(5000, 500 * 2 ** attempt));
      continue;
    }
    if (response.status === 401) throw new NeedsToken("a token is needed");
    if (!response.ok) throw await failure(response);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        for (const event of parser.feed(value)) {
          onEvent(event.event, JSON.parse(event.data));
          if (event.event === "done") return;
        }
      }
    } catch (error) {
      if (signal.aborted) return;
    }
    await pause(500);
  }
}

function pause(millis) {
  return new Promise((resolve) => { setTimeout(resolve, millis); });
}
