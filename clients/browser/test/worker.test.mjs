// The client's worker path in Node.js: a fake Worker runs the real worker module's protocol asynchronously, as a
// browser would (structured clone, transferred buffers); and a worker that fails to load falls back to the main thread.
import assert from "node:assert/strict";
import { test } from "node:test";

import { attachDecoder } from "../decode-worker.js";
import { streamChat } from "../llm-relay-client.js";
import { body, chunk, fakeRelay, options, streamed, summary } from "./fake-relay.mjs";

class FakeWorker {
  constructor({ loads = true } = {}) {
    this.onmessage = null;
    this.onerror = null;
    this.transferred = 0;
    this.terminated = false;
    const scope = { onmessage: null, postMessage: (message) => this.#deliver(() => this.onmessage?.({ data: message })) };
    this.scope = scope;
    if (loads) attachDecoder(scope);
    else this.#deliver(() => this.onerror?.({ message: "404", preventDefault() {} }));
  }
  #deliver(fn) { setTimeout(fn, 1); }
  postMessage(message, transfer = []) {
    this.transferred += transfer.length;
    const copy = structuredClone(message, { transfer });
    this.#deliver(() => this.scope.onmessage?.({ data: copy }));
  }
  terminate() { this.terminated = true; }
}

const parts = [`${chunk("Hel")}\n`, `${chunk("lo", "stop")}\n`, `${summary()}\n`];

test("decoding in the worker gives the same answer, the chunks' buffers transferred", async () => {
  const worker = new FakeWorker();
  let tokens = "";
  const result = await streamChat({ ...options(fakeRelay([streamed(parts)]), { worker: () => worker }), body,
                                    onToken: (t) => { tokens += t; } }).done;
  assert.equal(tokens, "Hello");
  assert.equal(result.termination_reason, "stop");
  assert.equal(result.client.chunks, 2);
  assert.equal(worker.transferred, 3);
  assert.ok(worker.terminated);
});

test("a worker that fails to load hands its chunks to the main thread", async () => {
  const worker = new FakeWorker({ loads: false });
  const result = await streamChat({ ...options(fakeRelay([streamed(parts)]), { worker: () => worker }), body }).done;
  assert.equal(result.termination_reason, "stop");
  assert.equal(worker.transferred, 0);
});

test("SSE through the worker", async () => {
  const sse = [`data: ${chunk("Hel")}\n\n`, `data: ${chunk("lo", "stop")}\n\ndata: [DONE]\n\n`];
  const result = await streamChat({ ...options(fakeRelay([streamed(sse)]), { worker: () => new FakeWorker() }),
                                    body, format: "sse" }).done;
  assert.equal(result.finish_reason, "stop");
});
