// The decoding worker: it receives the response body's chunks (transferred ArrayBuffers) and posts back the parsed
// events, so JSON parsing of a long, fast stream stays off the page's main thread.
//
// Protocol (main -> worker): { type: "start", format: "ndjson" | "sse" }, { type: "chunk", bytes: ArrayBuffer },
// { type: "end" }. Worker -> main: { type: "ready" } once loaded, { type: "events", events } for each chunk that
// completed at least one event, { type: "ended", events } after "end" (the last events, possibly none).
import { createStreamParser } from "./stream-parser.js";

/**
 * Wire the protocol to a worker scope (or any object with `postMessage` and an assignable `onmessage`).
 * @param {{ postMessage(message: unknown): void, onmessage: ((event: { data: any }) => void) | null }} scope
 */
export function attachDecoder(scope) {
  let parser = null;
  scope.onmessage = ({ data: message }) => {
    if (message.type === "start") {
      parser = createStreamParser(message.format);
    } else if (message.type === "chunk") {
      const events = parser.push(new Uint8Array(message.bytes));
      if (events.length) scope.postMessage({ type: "events", events });
    } else if (message.type === "end") {
      scope.postMessage({ type: "ended", events: parser ? parser.end() : [] });
      parser = null;
    }
  };
  scope.postMessage({ type: "ready" });
}

if (typeof WorkerGlobalScope !== "undefined" && globalThis instanceof WorkerGlobalScope) attachDecoder(globalThis);
