// llm-relay browser client: stream a chat completion (NDJSON or SSE) or ask for one JSON answer, and cancel it
// properly. Works in browsers and in Node.js 18+ (global fetch, crypto.randomUUID, performance.now).
//
// On AWS Lambda a dropped connection never reaches the function, so aborting the fetch alone does not stop the
// upstream generation (and its bill). `cancel()` does both: it aborts the fetch and calls
// POST /v1/requests/{id}/cancel with the same key. Every request carries an `X-Client-Request-Id` the client chose,
// so the cancel call can name it at any moment: before the relay answered with its headers, for `stream: false`,
// even before the request reached the relay. Retries before the first byte keep that id, so the relay sees one
// request however many attempts it took.
//
//   import { createRelayClient } from "llm-relay-client";
//   const relay = createRelayClient({ baseUrl, apiKey, timeout: 30000 });
//   const run = relay.streamChat({ body: { model: "gpt-4o-mini", messages }, onToken: (text) => out.append(text) });
//   stopButton.onclick = () => run.cancel();
//   const summary = await run.done;   // relay.summary plus `client: { ttft_ms, tpot_ms, duration_ms, chunks }`
//   onUnmount(() => relay.dispose()); // cancels whatever still runs
import { openDecoder } from "./decoder.js";

/** The guide's client configuration and its defaults. */
export const DEFAULT_CONFIG = Object.freeze({
  timeout: 30000, // ms without a byte (heartbeats count) before the stream is aborted and cancelled
  retryAttempts: 2, // retries after the first attempt, before the first byte only
  retryDelay: 800, // ms, the base of the exponential backoff (full jitter)
  chunkThrottle: 16, // ms between deliveries to onChunk/onToken (0: every chunk at once)
  maxBufferSize: 50, // chunks held before a delivery is forced
  metrics: Object.freeze({ ttft: true, tpot: true, cancellation: true, finishReason: true }),
});

const STREAM_PATHS = { ndjson: "/api/v1/chat/stream", sse: "/v1/chat/completions" };
const RETRY_STATUSES = new Set([429, 502, 503]);

export class RelayStreamError extends Error {
  /**
   * @param {{message?: string, code?: string, request_id?: string} | undefined} error the relay's error object
   * @param {number} status HTTP status (0 when no response carried the error)
   * @param {{cause?: unknown, partial?: boolean, client?: object, clientRequestId?: string}} [details]
   */
  constructor(error, status, details = {}) {
    super(error?.message ?? `relay error (HTTP ${status})`, details.cause ? { cause: details.cause } : undefined);
    this.name = "RelayStreamError";
    this.code = error?.code ?? null;
    this.status = status;
    this.requestId = error?.request_id ?? null;
    this.clientRequestId = details.clientRequestId ?? null;
    this.partial = details.partial ?? false; // some text was delivered before the error
    this.client = details.client ?? null; // the client-side metrics up to the error
  }
}

/** Merge a partial configuration over the defaults (metrics switches merged one by one). */
export function resolveConfig(config = {}) {
  const merged = { ...DEFAULT_CONFIG };
  for (const key of ["timeout", "retryAttempts", "retryDelay", "chunkThrottle", "maxBufferSize"]) {
    if (config[key] !== undefined) merged[key] = config[key];
  }
  merged.metrics = { ...DEFAULT_CONFIG.metrics, ...config.metrics };
  return merged;
}

const abortError = () => new DOMException("The operation was aborted.", "AbortError");

function abortableSleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(abortError());
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); reject(abortError()); }, { once: true });
  });
}

/** Seconds from `Retry-After` (a number or an HTTP date), or milliseconds from `retry-after-ms`; null if neither. */
export function retryAfterMs(headers, now = Date.now()) {
  const ms = Number.parseFloat(headers.get("retry-after-ms") ?? "");
  if (Number.isFinite(ms) && ms >= 0) return ms;
  const value = headers.get("retry-after");
  if (value === null) return null;
  const seconds = Number(value);
  if (value.trim() !== "" && Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, date - now);
}

/**
 * A client bound to one relay and key: `streamChat`, `completeChat`, and `dispose()` for everything they started.
 * @param {object} options see llm-relay-client.d.ts (RelayClientOptions)
 */
export function createRelayClient(options) {
  const { baseUrl, apiKey, fetchImpl = globalThis.fetch.bind(globalThis), worker = "auto",
          sleep = abortableSleep, random = Math.random, now = () => performance.now() } = options;
  const config = resolveConfig(options);
  const context = { base: baseUrl.replace(/\/+$/, ""), apiKey, fetchImpl, worker, sleep, random, now, config,
                    active: new Set() };
  return {
    config,
    streamChat: (request) => streamRun(context, request),
    completeChat: (request) => completeRun(context, request),
    /** Cancel every run still going (abort plus the cancel call); resolves when the relay answered them all. */
    dispose: () => Promise.all([...context.active].map((run) => run.cancel())).then(() => undefined),
    get active() { return context.active.size; },
  };
}

/** Stream one chat completion with a client of its own (the options carry the client's and the request's). */
export function streamChat(options) {
  return createRelayClient(options).streamChat(options);
}

/** One chat.completion (`stream: false`) with a client of its own. */
export function completeChat(options) {
  return createRelayClient(options).completeChat(options);
}

function streamRun(context, { body, format = "ndjson", onChunk, onToken, clientRequestId }) {
  const path = STREAM_PATHS[format];
  if (!path) throw new TypeError(`format must be "ndjson" or "sse", not ${format}`);
  const payload = format === "sse" ? { stream_options: { include_usage: true }, ...body, stream: true } : body;
  return startRun(context, { path, body: payload, clientRequestId, watch: true },
    (response, run) => consumeStream(context, response, run, { format, onChunk, onToken }));
}

function completeRun(context, { body, clientRequestId }) {
  // No no-chunk timeout here: a whole answer legitimately takes longer than a pause between chunks.
  return startRun(context, { path: "/v1/chat/completions", body: { ...body, stream: false }, clientRequestId,
                             watch: false }, (response) => response.json());
}

// One request with its retries, watchdog, cancel and outcome; `consume(response, run)` reads a 2xx answer.
function startRun(context, { path, body, clientRequestId, watch }, consume) {
  const clientId = clientRequestId ?? globalThis.crypto.randomUUID();
  const controller = new AbortController();
  const meter = createMeter(context.config.metrics, context.now);
  const run = { clientId, meter, status: 0, requestId: null, stopped: null, cancelCall: null, watchdog: null,
                arm: () => {} };
  const { timeout } = context.config;
  if (watch && timeout > 0 && Number.isFinite(timeout)) {
    run.arm = () => {
      clearTimeout(run.watchdog);
      run.watchdog = setTimeout(() => stop("timeout"), timeout);
    };
  }

  function stop(reason) {
    if (!run.stopped) {
      run.stopped = reason;
      meter.cancelled();
      clearTimeout(run.watchdog);
      controller.abort();
      run.cancelCall = sendCancel(context, clientId).then((ok) => meter.acknowledged(ok));
    }
    return run.cancelCall;
  }

  const handle = { cancel: () => stop("cancelled") };
  context.active.add(handle);
  const done = (async () => {
    try {
      const response = await fetchWithRetries(context, run, path, body, controller.signal);
      const result = response && (await consume(response, run));
      return await finish(run, result);
    } catch (error) {
      return await settleError(context, run, error);
    } finally {
      clearTimeout(run.watchdog);
      context.active.delete(handle);
    }
  })();
  done.catch(() => {}); // the caller awaits `done`; no unhandled rejection if it only cancels

  return {
    done,
    /** Abort the fetch and tell the relay, by the client id. Resolves true when the relay answered 202. */
    cancel: handle.cancel,
    clientRequestId: clientId,
    get requestId() { return run.requestId; },
  };
}

async function finish(run, result) {
  if (result) return result;
  await run.cancelCall; // cancelled: resolve once the relay heard it, with what it answered
  return { object: "relay.summary", id: run.requestId, client_request_id: run.clientId,
           termination_reason: "client_cancelled", client: run.meter.report() };
}

async function settleError(context, run, error) {
  if (run.stopped === "timeout") {
    await run.cancelCall;
    throw new RelayStreamError({ code: "timeout", message: `no data from the relay for ${context.config.timeout} ms`,
                                 request_id: run.requestId }, run.status,
                               { partial: run.meter.tokens > 0, client: run.meter.report(), clientRequestId: run.clientId });
  }
  if (run.stopped === "cancelled" && (!(error instanceof RelayStreamError) || error.code === "client_cancelled")) {
    return finish(run, null);
  }
  if (error instanceof RelayStreamError) {
    error.clientRequestId = run.clientId;
    error.client ??= run.meter.report();
    throw error;
  }
  throw new RelayStreamError({ code: "network_error", message: `the relay could not be reached: ${error?.message}` },
                             run.status, { cause: error, client: run.meter.report(), clientRequestId: run.clientId });
}

// Before the first byte only: network errors before a response, 429, 502 and 503, each attempt under the same
// client id. Anything after a 2xx response is never retried (the relay may already be generating, and billing).
async function fetchWithRetries(context, run, path, body, signal) {
  const { retryAttempts, retryDelay } = context.config;
  for (let attempt = 0; ; attempt += 1) {
    run.arm();
    let response;
    try {
      response = await context.fetchImpl(`${context.base}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${context.apiKey}`,
                   "x-client-request-id": run.clientId },
        body: JSON.stringify(body),
        signal,
      });
    } catch (error) {
      if (run.stopped || attempt >= retryAttempts) throw error;
      await backoff(context, run, attempt, null, signal);
      continue;
    }
    run.status = response.status;
    run.requestId = response.headers.get("x-request-id");
    if (response.ok) return response;
    if (RETRY_STATUSES.has(response.status) && attempt < retryAttempts && !run.stopped) {
      await response.body?.cancel?.().catch(() => {});
      await backoff(context, run, attempt, retryAfterMs(response.headers), signal);
      continue;
    }
    const payload = await response.json().catch(() => ({}));
    if (run.stopped === "cancelled" && payload.error?.code === "client_cancelled") return null;
    throw new RelayStreamError(payload.error, response.status);
  }
}

async function backoff(context, run, attempt, retryAfter, signal) {
  clearTimeout(run.watchdog); // a deliberate wait is not silence
  run.meter.retried();
  const delay = retryAfter ?? context.random() * context.config.retryDelay * 2 ** attempt;
  await context.sleep(delay, signal);
}

async function sendCancel(context, clientId) {
  try {
    const response = await context.fetchImpl(`${context.base}/v1/requests/${encodeURIComponent(clientId)}/cancel`, {
      method: "POST",
      headers: { authorization: `Bearer ${context.apiKey}` },
    });
    return response.status === 202;
  } catch {
    return false;
  }
}

// Read the body, decode it (worker or main thread), deliver chunks in throttled batches, end on the summary,
// [DONE] or a terminal error. A stream that just stops is `incomplete`.
async function consumeStream(context, response, run, { format, onChunk, onToken }) {
  const delivery = createDelivery(context.config, onChunk, onToken);
  const stream = { finishReason: null, usage: null, outcome: null };
  const decoder = openDecoder(format, (events) => {
    for (const event of events) {
      if (!stream.outcome) stream.outcome = handleEvent(run, stream, delivery, event);
    }
  }, context.worker);
  const reader = response.body.getReader();
  try {
    for (;;) {
      const part = await reader.read();
      if (part.done) break;
      if (!part.value?.byteLength) continue;
      run.arm(); // any byte is life: chunks and heartbeats alike
      decoder.push(part.value);
      if (stream.outcome) break;
    }
    if (stream.outcome) reader.cancel().catch(() => {});
    await decoder.end();
  } catch (error) {
    delivery.drop();
    if (run.stopped) throw error;
    throw new RelayStreamError({ code: "incomplete", message: `the stream broke off: ${error?.message}` },
                               response.status, { cause: error, partial: run.meter.tokens > 0 });
  } finally {
    decoder.close();
  }
  return endStream(run, stream, delivery, response.status);
}

function handleEvent(run, stream, delivery, event) {
  if (event.type === "done") return { summary: sseSummary(run, stream) };
  if (event.type === "malformed") {
    return { error: { code: "malformed_stream", message: `the relay sent a line that is not JSON: ${event.text}` } };
  }
  const message = event.data;
  if (message.error) return { error: message.error };
  if (message.object === "relay.summary") return { summary: message };
  run.meter.chunk();
  if (message.usage) stream.usage = message.usage;
  for (const choice of message.choices ?? []) stream.finishReason = choice.finish_reason ?? stream.finishReason;
  const text = message.choices?.[0]?.delta?.content;
  if (text) run.meter.token();
  delivery.push(message, text);
  return null;
}

function sseSummary(run, stream) {
  return { object: "relay.summary", id: run.requestId, finish_reason: stream.finishReason,
           termination_reason: stream.finishReason, usage: stream.usage };
}

function endStream(run, stream, delivery, status) {
  const { outcome } = stream;
  if (run.stopped) {
    delivery.drop();
    return null; // cancelled: `finish` builds the client_cancelled summary
  }
  delivery.flush();
  const partial = run.meter.tokens > 0;
  if (!outcome) {
    throw new RelayStreamError({ code: "incomplete", message: "the stream ended without a summary" }, status,
                               { partial });
  }
  if (outcome.error) throw new RelayStreamError(outcome.error, status, { partial });
  const summary = { ...outcome.summary, client_request_id: run.clientId };
  const finishReason = summary.finish_reason ?? stream.finishReason;
  if (run.meter.switches.finishReason) {
    run.meter.finishReason = finishReason ?? null;
    // the answer ended cleanly but no choice said why: it may be cut short, and the page should say so
    if (!finishReason && summary.termination_reason !== "client_cancelled") summary.fallback = true;
  }
  return { ...summary, client: run.meter.report() };
}

// Chunks wait at most `chunkThrottle` ms, or until `maxBufferSize` of them are waiting, then go out together:
// onChunk for each, onToken once with the batch's text. A page repaints once per batch, not once per token.
function createDelivery({ chunkThrottle, maxBufferSize }, onChunk, onToken) {
  let chunks = [];
  let text = "";
  let timer = null;
  function flush() {
    clearTimeout(timer);
    timer = null;
    const batch = chunks;
    const batchText = text;
    chunks = [];
    text = "";
    for (const chunk of batch) onChunk?.(chunk);
    if (batchText) onToken?.(batchText);
  }
  return {
    push(chunk, chunkText) {
      chunks.push(chunk);
      if (chunkText) text += chunkText;
      if (chunkThrottle <= 0 || chunks.length >= maxBufferSize) flush();
      else timer ??= setTimeout(flush, chunkThrottle);
    },
    flush,
    drop() {
      clearTimeout(timer);
      chunks = [];
      text = "";
    },
  };
}

// Client-side timing with performance.now(): what the page's user waited, retries and network included.
function createMeter(switches, now) {
  const started = now();
  const times = { first: null, last: null, cancel: null, acknowledged: null };
  const round = (ms) => Math.round(ms * 10) / 10;
  return {
    switches,
    tokens: 0,
    chunks: 0,
    retries: 0,
    finishReason: undefined,
    chunk() { this.chunks += 1; },
    token() {
      const at = now();
      times.first ??= at;
      times.last = at;
      this.tokens += 1;
    },
    retried() { this.retries += 1; },
    cancelled() { times.cancel = now(); },
    acknowledged(ok) {
      times.acknowledged = now();
      return ok;
    },
    report() {
      const report = { duration_ms: round(now() - started), chunks: this.chunks, retries: this.retries };
      if (switches.ttft) report.ttft_ms = times.first === null ? null : round(times.first - started);
      if (switches.tpot) {
        report.tpot_ms = this.tokens > 1 ? round((times.last - times.first) / (this.tokens - 1)) : null;
      }
      if (switches.cancellation && times.cancel !== null) {
        report.cancelled = true;
        report.cancel_ms = times.acknowledged === null ? null : round(times.acknowledged - times.cancel);
      }
      if (switches.finishReason && this.finishReason !== undefined) report.finish_reason = this.finishReason;
      return report;
    },
  };
}
