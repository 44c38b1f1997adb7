// llm-relay browser client: stream a chat completion as NDJSON (or ask for one JSON answer), and cancel it properly.
//
// On AWS Lambda a dropped connection never reaches the function, so aborting the fetch alone does not stop
// the upstream generation (and its bill). `cancel()` does both: it aborts the fetch and calls
// POST /v1/requests/{id}/cancel with the same key. Every request carries an `X-Client-Request-Id` the client
// chose (crypto.randomUUID()), so the cancel call can name it at any moment: before the relay answered with
// its headers (a slow upstream), for `stream: false`, even before the request reached the relay.
// Works in browsers and in Node.js 18+ (global fetch and crypto.randomUUID).
//
//   import { streamChat, completeChat } from "./llm-relay-client.js";
//   const run = streamChat({ baseUrl, apiKey, body: { model: "gpt-4o-mini", messages },
//                            onToken: (text) => output.append(text) });
//   stopButton.onclick = () => run.cancel();
//   const summary = await run.done;   // {object: "relay.summary", termination_reason, usage, cost_usd, ...}
//   const answer = await completeChat({ baseUrl, apiKey, body }).done;   // one chat.completion (stream: false)

export class RelayStreamError extends Error {
  constructor(error, status) {
    super(error?.message ?? `relay error (HTTP ${status})`);
    this.name = "RelayStreamError";
    this.code = error?.code ?? null;
    this.status = status;
    this.requestId = error?.request_id ?? null;
  }
}

// One request to the relay with the cancel that always reaches it; `consume(response)` reads the answer.
function relayRequest({ baseUrl, apiKey, path, body, clientRequestId, fetchImpl }, consume) {
  const base = baseUrl.replace(/\/+$/, "");
  const clientId = clientRequestId ?? globalThis.crypto.randomUUID();
  const controller = new AbortController();
  const state = { requestId: null, cancelled: false };
  const cancelledSummary = () => ({ object: "relay.summary", id: state.requestId, client_request_id: clientId,
                                    termination_reason: "client_cancelled" });

  const done = (async () => {
    let response;
    try {
      response = await fetchImpl(`${base}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${apiKey}`,
                   "x-client-request-id": clientId },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
    } catch (error) {
      if (state.cancelled) return cancelledSummary(); // cancelled before the relay answered
      throw error;
    }
    state.requestId = response.headers.get("x-request-id");
    if (!response.ok) {
      const payload = await response.json().catch(() => ({}));
      if (state.cancelled && payload.error?.code === "client_cancelled") return cancelledSummary();
      throw new RelayStreamError(payload.error, response.status);
    }
    try {
      return (await consume(response, state)) ?? cancelledSummary();
    } catch (error) {
      if (state.cancelled && !(error instanceof RelayStreamError)) return cancelledSummary();
      throw error;
    }
  })();
  done.catch(() => {}); // the caller awaits `done`; no unhandled rejection if it only cancels

  // Abort the fetch and tell the relay, by the client id: it works before any header arrived. True on 202.
  async function cancel() {
    state.cancelled = true;
    controller.abort();
    const response = await fetchImpl(`${base}/v1/requests/${encodeURIComponent(clientId)}/cancel`, {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey}` },
    });
    return response.status === 202;
  }

  return { done, cancel, clientRequestId: clientId, get requestId() { return state.requestId; } };
}

// Stream a chat completion as NDJSON: `done` resolves to the relay.summary line (client_cancelled after cancel()).
export function streamChat({ baseUrl, apiKey, body, onChunk, onToken, clientRequestId,
                             fetchImpl = globalThis.fetch }) {
  return relayRequest({ baseUrl, apiKey, path: "/api/v1/chat/stream", body, clientRequestId, fetchImpl },
    async (response, state) => {
      const reader = response.body.getReader();
      const decoder = new TextDecoder("utf-8");
      let buffer = "";
      for (;;) {
        const part = await reader.read();
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
      if (state.cancelled) return null;
      throw new RelayStreamError({ message: "the stream ended without a summary", code: "incomplete" }, 0);
    });
}

// One chat.completion (`stream: false`): `done` resolves to it (a client_cancelled summary after cancel()).
export function completeChat({ baseUrl, apiKey, body, clientRequestId, fetchImpl = globalThis.fetch }) {
  return relayRequest({ baseUrl, apiKey, path: "/v1/chat/completions", body: { ...body, stream: false },
                        clientRequestId, fetchImpl },
    (response) => response.json());
}
