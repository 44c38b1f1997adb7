// llm-relay browser client: stream a chat completion as NDJSON, and cancel it properly.
//
// On AWS Lambda a dropped connection never reaches the function, so aborting the fetch alone does not stop
// the upstream generation (and its bill). `cancel()` does both: it aborts the fetch and calls
// POST /v1/requests/{id}/cancel with the same key. Works in browsers and in Node.js 18+ (global fetch).
//
//   import { streamChat } from "./llm-relay-client.js";
//   const run = streamChat({ baseUrl, apiKey, body: { model: "gpt-4o-mini", messages },
//                            onToken: (text) => output.append(text) });
//   stopButton.onclick = () => run.cancel();
//   const summary = await run.done;   // {object: "relay.summary", termination_reason, usage, cost_usd, ...}

export class RelayStreamError extends Error {
  constructor(error, status) {
    super(error?.message ?? `relay error (HTTP ${status})`);
    this.name = "RelayStreamError";
    this.code = error?.code ?? null;
    this.status = status;
    this.requestId = error?.request_id ?? null;
  }
}

export function streamChat({ baseUrl, apiKey, body, onChunk, onToken, fetchImpl = globalThis.fetch }) {
  const base = baseUrl.replace(/\/+$/, "");
  const controller = new AbortController();
  let requestId = null;
  let cancelled = false;
  let resolveId;
  const idKnown = new Promise((resolve) => { resolveId = resolve; });

  const done = (async () => {
    const response = await fetchImpl(`${base}/api/v1/chat/stream`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${apiKey}` },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    requestId = response.headers.get("x-request-id");
    resolveId(requestId);
    if (!response.ok) {
      const payload = await response.json().catch(() => ({}));
      throw new RelayStreamError(payload.error, response.status);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder("utf-8");
    let buffer = "";
    for (;;) {
      let part;
      try {
        part = await reader.read();
      } catch (error) {
        if (cancelled) return { object: "relay.summary", id: requestId, termination_reason: "client_cancelled" };
        throw error;
      }
      if (part.done) break;
      buffer += decoder.decode(part.value, { stream: true });
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).trim();
        buffer = buffer.slice(newline + 1);
        if (!line) continue; // heartbeat or flush nudge
        const message = JSON.parse(line);
        if (message.error) throw new RelayStreamError(message.error, response.status);
        if (message.object === "relay.summary") return message;
        onChunk?.(message);
        const text = message.choices?.[0]?.delta?.content;
        if (text) onToken?.(text);
      }
    }
    if (cancelled) return { object: "relay.summary", id: requestId, termination_reason: "client_cancelled" };
    throw new RelayStreamError({ message: "the stream ended without a summary", code: "incomplete" }, 0);
  })();
  done.catch(() => {}); // the caller awaits `done`; no unhandled rejection if it only cancels

  async function cancel() {
    cancelled = true;
    const id = requestId ?? (await Promise.race([idKnown, new Promise((r) => setTimeout(r, 0, null))]));
    controller.abort();
    if (!id) return false; // nothing started: the abort was enough
    const response = await fetchImpl(`${base}/v1/requests/${encodeURIComponent(id)}/cancel`, {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey}` },
    });
    return response.status === 202;
  }

  return { done, cancel, get requestId() { return requestId; } };
}
