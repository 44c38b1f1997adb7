// The client against a fake fetch (test/fake-relay.mjs): no relay, no socket. Decoding runs on the main thread
// here (Node.js has no Web Worker); test/worker.test.mjs runs the worker path.
import assert from "node:assert/strict";
import { test } from "node:test";

import { createRelayClient, RelayStreamError, streamChat, completeChat, DEFAULT_CONFIG, retryAfterMs }
  from "../llm-relay-client.js";
import { body, chunk, failing, fakeRelay, options, silent, streamed, summary, unreachable } from "./fake-relay.mjs";

test("the guide's defaults", () => {
  assert.deepEqual({ ...DEFAULT_CONFIG, metrics: { ...DEFAULT_CONFIG.metrics } }, {
    timeout: 30000, retryAttempts: 2, retryDelay: 800, chunkThrottle: 16, maxBufferSize: 50,
    metrics: { ttft: true, tpot: true, cancellation: true, finishReason: true },
  });
  const relay = createRelayClient({ baseUrl: "http://x", apiKey: "k", fetchImpl: fetch, metrics: { tpot: false } });
  assert.equal(relay.config.timeout, 30000);
  assert.deepEqual(relay.config.metrics, { ttft: true, tpot: false, cancellation: true, finishReason: true });
});

test("NDJSON split anywhere, even inside a character, streams the tokens and ends with the summary", async () => {
  const text = `${chunk("Hé")}\n\n${chunk("llo", "stop")}\n${summary()}\n`;
  const bytes = new TextEncoder().encode(text);
  const cut = text.indexOf("é") + 1; // between the two bytes of "é"
  const relay = fakeRelay([streamed([bytes.slice(0, 5), bytes.slice(5, cut), bytes.slice(cut, cut + 30),
                                     bytes.slice(cut + 30)])]);
  let tokens = "";
  const chunks = [];
  const run = streamChat({ ...options(relay), body, onToken: (t) => { tokens += t; }, onChunk: (c) => chunks.push(c) });
  const result = await run.done;
  assert.equal(tokens, "Héllo");
  assert.equal(chunks.length, 2);
  assert.equal(result.termination_reason, "stop");
  assert.equal(result.client_request_id, run.clientRequestId);
  assert.equal(result.fallback, undefined);
  assert.equal(result.client.chunks, 2);
  assert.equal(result.client.finish_reason, "stop");
  assert.equal(relay.calls[0].url, "http://relay.test/api/v1/chat/stream");
  assert.equal(relay.calls[0].init.headers.authorization, "Bearer lr-test");
  assert.equal(run.requestId, "req_fake");
});

test("SSE from /v1/chat/completions: comments, CRLF and the usage chunk; [DONE] ends it", async () => {
  const usage = { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 };
  const relay = fakeRelay([streamed([
    ": ping\r\n\r\n", `data: ${chunk("Hel")}\r\n\r\ndata: ${chunk("lo", "stop")}\n`, "\n",
    `data: ${JSON.stringify({ id: "req_fake", object: "chat.completion.chunk", choices: [], usage })}\n\n`,
    "data: [DONE]\n\n",
  ])]);
  let tokens = "";
  const result = await streamChat({ ...options(relay), body, format: "sse", onToken: (t) => { tokens += t; } }).done;
  assert.equal(tokens, "Hello");
  assert.equal(relay.calls[0].url, "http://relay.test/v1/chat/completions");
  assert.equal(relay.calls[0].body.stream, true);
  assert.deepEqual(relay.calls[0].body.stream_options, { include_usage: true });
  assert.equal(result.object, "relay.summary");
  assert.equal(result.finish_reason, "stop");
  assert.deepEqual(result.usage, usage);
  assert.equal(result.client.chunks, 3);
});

test("503 then success: retried under the same client id", async () => {
  const relay = fakeRelay([failing(503, "upstream_unavailable"), failing(502, "upstream_error"),
                           streamed([`${chunk("ok", "stop")}\n${summary()}\n`])]);
  const run = streamChat({ ...options(relay), body });
  const result = await run.done;
  assert.equal(result.termination_reason, "stop");
  assert.equal(relay.calls.length, 3);
  assert.deepEqual(relay.calls.map((c) => c.clientId), Array(3).fill(run.clientRequestId));
  assert.equal(result.client.retries, 2);
});

test("backoff is exponential with full jitter; Retry-After and retry-after-ms are honoured", async () => {
  const waits = [];
  const sleep = async (ms) => { waits.push(ms); };
  const jitter = fakeRelay([unreachable(), unreachable(), streamed([`${summary()}\n`])]);
  await streamChat({ ...options(jitter, { sleep, random: () => 0.5, retryDelay: 100 }), body }).done;
  assert.deepEqual(waits, [50, 100]); // 0.5 × 100 × 2^0, 0.5 × 100 × 2^1
  waits.length = 0;
  const limited = fakeRelay([failing(429, "rate_limit_exceeded", { "retry-after": "2" }),
                             failing(429, "rate_limit_exceeded", { "retry-after-ms": "150", "retry-after": "1" }),
                             streamed([`${summary()}\n`])]);
  await streamChat({ ...options(limited, { sleep }), body }).done;
  assert.deepEqual(waits, [2000, 150]);
  assert.equal(retryAfterMs(new Headers({ "retry-after": new Date(10_000).toUTCString() }), 4_000), 6_000);
});

test("a real wait: tiny Retry-After and the default sleep", async () => {
  const relay = fakeRelay([failing(429, "rate_limit_exceeded", { "retry-after-ms": "30" }), streamed([`${summary()}\n`])]);
  const { sleep, ...rest } = options(relay);
  const started = performance.now();
  await streamChat({ ...rest, body }).done;
  assert.ok(performance.now() - started >= 25);
});

test("no retry on 400, nor once retries are spent", async () => {
  const bad = fakeRelay([failing(400, "invalid_request"), streamed([`${summary()}\n`])]);
  await assert.rejects(streamChat({ ...options(bad), body }).done,
    (error) => error instanceof RelayStreamError && error.code === "invalid_request" && error.status === 400);
  assert.equal(bad.calls.length, 1);
  const down = fakeRelay([failing(503, "upstream_unavailable")]);
  await assert.rejects(streamChat({ ...options(down, { retryAttempts: 2 }), body }).done,
    (error) => error.status === 503);
  assert.equal(down.calls.length, 3);
  const gone = fakeRelay([unreachable()]);
  await assert.rejects(streamChat({ ...options(gone, { retryAttempts: 1 }), body }).done,
    (error) => error instanceof RelayStreamError && error.code === "network_error");
  assert.equal(gone.calls.length, 2);
});

test("no retry after the first byte: a stream that breaks off is incomplete", async () => {
  const broken = fakeRelay([streamed([`${chunk("Hel")}\n`, `${chunk("lo")}`])]);
  await assert.rejects(streamChat({ ...options(broken), body }).done,
    (error) => error.code === "incomplete" && error.partial === true);
  assert.equal(broken.calls.length, 1);
});

test("a terminal error line rejects with the relay's code, after the text before it", async () => {
  const relay = fakeRelay([streamed([`${chunk("Hel")}\n{"error":{"code":"upstream_error","message":"reset"}}\n`])]);
  let tokens = "";
  await assert.rejects(streamChat({ ...options(relay), body, onToken: (t) => { tokens += t; } }).done,
    (error) => error.code === "upstream_error" && error.partial && error.client.chunks === 1);
  assert.equal(tokens, "Hel");
});

test("an end without a finish reason is flagged as a fallback", async () => {
  const sse = fakeRelay([streamed([`data: ${chunk("Hel")}\n\ndata: [DONE]\n\n`])]);
  const cut = await streamChat({ ...options(sse), body, format: "sse" }).done;
  assert.equal(cut.fallback, true);
  assert.equal(cut.client.finish_reason, null);
  const ndjson = fakeRelay([streamed([`${chunk("Hel")}\n${summary({ finish_reason: null })}\n`])]);
  assert.equal((await streamChat({ ...options(ndjson), body }).done).fallback, true);
});

test("no byte for `timeout` ms aborts the stream and sends the cancel call", async () => {
  const relay = fakeRelay([streamed([`${chunk("Hel")}\n`], { hang: true })]);
  const run = streamChat({ ...options(relay, { timeout: 40 }), body });
  await assert.rejects(run.done, (error) => error instanceof RelayStreamError && error.code === "timeout"
    && error.partial && error.client.cancelled === true);
  assert.equal(relay.cancels.length, 1);
  assert.equal(relay.cancels[0].url, `http://relay.test/v1/requests/${run.clientRequestId}/cancel`);
  const early = fakeRelay([silent()]);
  await assert.rejects(streamChat({ ...options(early, { timeout: 30 }), body }).done, (e) => e.code === "timeout");
  assert.equal(early.cancels.length, 1);
});

test("heartbeats count as life", async () => {
  const beats = Array(8).fill("\n");
  const relay = fakeRelay([streamed([...beats, `${chunk("ok", "stop")}\n${summary()}\n`], { gapMs: 15 })]);
  const result = await streamChat({ ...options(relay, { timeout: 60 }), body }).done;
  assert.equal(result.termination_reason, "stop");
  assert.equal(relay.cancels.length, 0);
});

test("cancel() ends with a client_cancelled summary once the relay answered the cancel call", async () => {
  const relay = fakeRelay([streamed([`${chunk("Hel")}\n`], { hang: true })]);
  let run;
  run = streamChat({ ...options(relay), body, onToken: () => { run.cancel(); } });
  const result = await run.done;
  assert.equal(result.termination_reason, "client_cancelled");
  assert.equal(result.client.cancelled, true);
  assert.equal(typeof result.client.cancel_ms, "number");
  assert.equal(await run.cancel(), true);
  assert.equal(relay.cancels.length, 1);
});

test("dispose() cancels every run still going, waiting ones included", async () => {
  const relay = fakeRelay([streamed([`${chunk("Hel")}\n`], { hang: true }), silent(), silent()]);
  const client = createRelayClient(options(relay));
  const runs = [client.streamChat({ body }), client.streamChat({ body, format: "sse" }), client.completeChat({ body })];
  await new Promise((resolve) => setTimeout(resolve, 10));
  assert.equal(client.active, 3);
  await client.dispose();
  for (const run of runs) assert.equal((await run.done).termination_reason, "client_cancelled");
  assert.equal(client.active, 0);
  assert.deepEqual(relay.cancels.map((c) => c.url).sort(),
    runs.map((r) => `http://relay.test/v1/requests/${r.clientRequestId}/cancel`).sort());
});

test("cancel during a backoff wait stops the retries", async () => {
  const relay = fakeRelay([failing(503, "upstream_unavailable", { "retry-after": "60" })]);
  const { sleep, ...rest } = options(relay);
  const run = streamChat({ ...rest, body });
  await new Promise((resolve) => setTimeout(resolve, 10));
  await run.cancel();
  assert.equal((await run.done).termination_reason, "client_cancelled");
  assert.equal(relay.calls.length, 1);
});

test("metrics: TTFT, TPOT and duration on the client's clock, per the switches", async () => {
  const clock = [0, 100, 150, 200, 260];
  const now = () => clock.shift() ?? 260;
  const parts = [`${chunk("a")}\n`, `${chunk("b")}\n`, `${chunk("c", "stop")}\n`, `${summary()}\n`];
  const relay = fakeRelay([streamed(parts)]);
  const result = await streamChat({ ...options(relay, { now }), body }).done;
  assert.deepEqual(result.client, { duration_ms: 260, chunks: 3, retries: 0, ttft_ms: 100, tpot_ms: 50,
                                    finish_reason: "stop" });
  const quiet = fakeRelay([streamed(parts)]);
  const off = await streamChat({ ...options(quiet, { metrics: { ttft: false, tpot: false, finishReason: false } }),
                                 body }).done;
  assert.deepEqual(Object.keys(off.client).sort(), ["chunks", "duration_ms", "retries"]);
});

test("chunkThrottle batches deliveries; maxBufferSize forces one", async () => {
  const parts = [`${chunk("a")}\n${chunk("b")}\n${chunk("c")}\n`, `${chunk("d", "stop")}\n${summary()}\n`];
  const batches = [];
  await streamChat({ ...options(fakeRelay([streamed(parts)]), { chunkThrottle: 1000 }), body,
                     onToken: (t) => batches.push(t) }).done;
  assert.deepEqual(batches, ["abcd"]); // one delivery, flushed at the end rather than after 1 s
  batches.length = 0;
  await streamChat({ ...options(fakeRelay([streamed(parts)]), { chunkThrottle: 1000, maxBufferSize: 2 }), body,
                     onToken: (t) => batches.push(t) }).done;
  assert.deepEqual(batches, ["ab", "cd"]);
});

test("completeChat asks for stream: false and retries the same way", async () => {
  const answer = { id: "req_fake", object: "chat.completion", choices: [] };
  const relay = fakeRelay([failing(503, "upstream_unavailable"),
                           () => new Response(JSON.stringify(answer), { status: 200 })]);
  const run = completeChat({ ...options(relay), body: { ...body, stream: true } });
  assert.deepEqual(await run.done, answer);
  assert.equal(relay.calls[1].body.stream, false);
  assert.equal(relay.calls[0].clientId, relay.calls[1].clientId);
});
