// Where the stream is decoded: in the decoding worker where the platform has Web Workers, on the main thread
// otherwise (Node.js, a worker that failed to load). Both run stream-parser.js; the caller sees the same events.
import { createStreamParser } from "./stream-parser.js";

/** The default worker: a module worker beside this file (bundlers recognise `new URL(..., import.meta.url)`). */
function defaultWorker() {
  if (typeof Worker !== "function") return null;
  return new Worker(new URL("./decode-worker.js", import.meta.url), { type: "module" });
}

/**
 * @param {"ndjson" | "sse"} format
 * @param {(events: object[]) => void} onEvents called in order, for every batch of parsed events
 * @param {"auto" | false | (() => any)} worker `false` decodes on the main thread; a function makes the worker
 * @returns {{ mode: "worker" | "main", push(bytes: Uint8Array): void, end(): Promise<void>, close(): void }}
 */
export function openDecoder(format, onEvents, worker = "auto") {
  let instance = null;
  if (worker !== false) {
    try {
      instance = worker === "auto" ? defaultWorker() : worker();
    } catch {
      instance = null; // a page's CSP may forbid workers: decode here instead
    }
  }
  return instance ? workerDecoder(format, onEvents, instance) : mainThreadDecoder(format, onEvents);
}

function mainThreadDecoder(format, onEvents) {
  const parser = createStreamParser(format);
  const deliver = (events) => { if (events.length) onEvents(events); };
  return {
    mode: "main",
    push: (bytes) => deliver(parser.push(bytes)),
    end: async () => deliver(parser.end()),
    close: () => {},
  };
}

// Chunks wait in `queue` until the worker said it is ready, so a worker that fails to load hands them, untouched,
// to the main-thread parser.
function workerDecoder(format, onEvents, worker) {
  let loaded = false;
  let fallback = null;
  let endRequested = false;
  const queue = [];
  let settle;
  const ended = new Promise((resolve, reject) => { settle = { resolve, reject }; });
  ended.catch(() => {});

  const send = (bytes) => {
    const whole = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength;
    const buffer = whole ? bytes.buffer : bytes.slice().buffer;
    worker.postMessage({ type: "chunk", bytes: buffer }, [buffer]);
  };
  worker.onmessage = ({ data: message }) => {
    if (message.type === "ready") {
      loaded = true;
      worker.postMessage({ type: "start", format });
      queue.splice(0).forEach(send);
      if (endRequested) worker.postMessage({ type: "end" });
    } else if (message.type === "events") {
      onEvents(message.events);
    } else if (message.type === "ended") {
      if (message.events.length) onEvents(message.events);
      settle.resolve();
    }
  };
  worker.onerror = (event) => {
    event?.preventDefault?.();
    if (loaded) {
      settle.reject(new Error(`the decoding worker failed: ${event?.message ?? "error"}`));
      return;
    }
    loaded = true;
    fallback = mainThreadDecoder(format, onEvents);
    queue.splice(0).forEach((bytes) => fallback.push(bytes));
    if (endRequested) fallback.end().then(settle.resolve, settle.reject);
  };

  return {
    get mode() { return fallback ? "main" : "worker"; },
    push(bytes) {
      if (fallback) fallback.push(bytes);
      else if (loaded) send(bytes);
      else queue.push(bytes);
    },
    end() {
      endRequested = true;
      if (fallback) fallback.end().then(settle.resolve, settle.reject);
      else if (loaded) worker.postMessage({ type: "end" });
      return ended;
    },
    close() { worker.terminate?.(); },
  };
}
