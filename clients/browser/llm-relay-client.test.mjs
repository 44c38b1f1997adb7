// The client against a real relay: node --test clients/browser/llm-relay-client.test.mjs, with RELAY_URL and
// RELAY_KEY pointing at `make dev` (tests/integration/test_browser_client.py does that). The package's own tests,
// with a fake fetch, are in test/ (`npm test`).
import assert from "node:assert/strict";
import { test } from "node:test";

import { completeChat, createRelayClient, RelayStreamError, streamChat } from "./llm-relay-client.js";

const baseUrl = process.env.RELAY_URL;
const apiKey = process.env.RELAY_KEY;
const message = [{ role: "user", content: "Hello" }];
const relay = createRelayClient({ baseUrl, apiKey });

test("streams tokens and ends with the summary", async () => {
  let text = "";
  const run = relay.streamChat({ body: { model: "gpt-4o-mini", messages: message, mock: { tokens: 5 } },
                                 onToken: (t) => { text += t; } });
  const summary = await run.done;
  assert.equal(text, "The quick brown fox jumps");
  assert.equal(summary.termination_reason, "stop");
  assert.equal(summary.usage.completion_tokens, 5);
  assert.ok(summary.client.chunks >= 5); // the 5 tokens, and the role and finishing chunks
  assert.equal(summary.client.finish_reason, "stop");
  assert.ok(summary.client.ttft_ms > 0 && summary.client.duration_ms >= summary.client.ttft_ms);
  assert.match(run.requestId, /^req_/);
  assert.match(run.clientRequestId, /^[0-9a-f-]{36}$/);
});

test("streams SSE from /v1/chat/completions", async () => {
  let text = "";
  const summary = await relay.streamChat({ format: "sse", onToken: (t) => { text += t; },
    body: { model: "gpt-4o-mini", messages: message, mock: { tokens: 3 } } }).done;
  assert.equal(text, "The quick brown");
  assert.equal(summary.finish_reason, "stop");
  assert.equal(summary.usage.completion_tokens, 3);
  assert.equal(summary.fallback, undefined);
});

test("cancel aborts the fetch and calls the relay's cancel", async () => {
  let tokens = 0;
  let cancelled;
  const run = relay.streamChat({
    body: { model: "gpt-4o-mini", messages: message, mock: { tokens: 1000, chunk_delay_ms: 10 } },
    onToken: () => { tokens += 1; if (tokens === 3) cancelled = run.cancel(); },
  });
  const summary = await run.done;
  assert.equal(summary.termination_reason, "client_cancelled");
  assert.equal(summary.client.cancelled, true);
  assert.equal(await cancelled, true);
  console.log(`CANCELLED ${run.requestId}`);
});

test("errors are RelayStreamError with the relay's code", async () => {
  const run = streamChat({ baseUrl, apiKey: "lr-wrong", body: { model: "gpt-4o-mini", messages: message } });
  await assert.rejects(run.done, (error) => error instanceof RelayStreamError && error.code === "invalid_api_key"
    && error.status === 401);
  const failing = relay.streamChat({
    body: { model: "gpt-4o-mini", messages: message, mock: { tokens: 5, drop_after: 2 } } });
  await assert.rejects(failing.done, (error) => error instanceof RelayStreamError && error.code === "upstream_error");
});

// The relay side of the next two (their log lines say client_cancelled) is checked by the Python test that runs
// this file; a cancel that reaches the relay before its request does is kept and honoured at admission.
test("cancel before the headers: the upstream holds them 3 s", async () => {
  const run = relay.streamChat({
    body: { model: "gpt-4o-mini", messages: message, mock: { headers_delay_ms: 3000, tokens: 5 } } });
  await new Promise((resolve) => setTimeout(resolve, 200)); // typically mid-flight; either way it is cancelled
  assert.equal(run.requestId, null); // no header yet
  assert.equal(await run.cancel(), true);
  const summary = await run.done;
  assert.equal(summary.termination_reason, "client_cancelled");
  console.log(`CANCELLED_EARLY ${run.clientRequestId}`);
});

test("stream: false is cancelled the same way", async () => {
  const run = relay.completeChat({
    body: { model: "gpt-4o-mini", messages: message, mock: { tokens: 1000, chunk_delay_ms: 10 } } });
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal(await run.cancel(), true);
  const summary = await run.done;
  assert.equal(summary.termination_reason, "client_cancelled");
  console.log(`CANCELLED_NOSTREAM ${run.clientRequestId}`);
});

test("stream: false answers one chat.completion", async () => {
  const answer = await completeChat({ baseUrl, apiKey,
    body: { model: "gpt-4o-mini", messages: message, mock: { tokens: 3 } } }).done;
  assert.equal(answer.object, "chat.completion");
  assert.equal(answer.choices[0].message.content, "The quick brown");
});
