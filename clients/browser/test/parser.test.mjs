// The pure parser the worker and the main thread share, and the worker's message protocol on a fake scope.
import assert from "node:assert/strict";
import { test } from "node:test";

import { attachDecoder } from "../decode-worker.js";
import { createStreamParser } from "../stream-parser.js";

const bytes = (text) => new TextEncoder().encode(text);

function parseAll(format, parts) {
  const parser = createStreamParser(format);
  return [...parts.flatMap((part) => parser.push(bytes(part))), ...parser.end()];
}

test("NDJSON: a line is an event once its newline arrived; blank lines are heartbeats", () => {
  assert.deepEqual(parseAll("ndjson", ['{"a":', '1}\n\n\r\n{"b":2}\r', '\n{"c":3}']), [
    { type: "message", data: { a: 1 } }, { type: "message", data: { b: 2 } }, { type: "message", data: { c: 3 } },
  ]);
  assert.deepEqual(parseAll("ndjson", ["not json\n"]), [{ type: "malformed", text: "not json" }]);
  assert.deepEqual(parseAll("ndjson", ['{"cut": "sho']), []); // cut short at the end: incomplete, not malformed
});

test("SSE: data fields joined, comments and other fields skipped, [DONE], CR line ends", () => {
  assert.deepEqual(parseAll("sse", [": ping\n\nevent: x\nid: 7\ndata: {\"a\":\ndata: 1}\n", "\n",
                                    "data:[DONE]\r\r"]),
    [{ type: "message", data: { a: 1 } }, { type: "done" }]);
  assert.deepEqual(parseAll("sse", ["data: nope\n\n", "data: {\"unclosed\": 1}\n"]),
    [{ type: "malformed", text: "nope" }]); // an event without its blank line is discarded at the end
});

test("a character split across chunks is decoded whole", () => {
  const parser = createStreamParser("ndjson");
  const line = bytes('{"t":"👍"}\n');
  assert.deepEqual([...parser.push(line.slice(0, 8)), ...parser.push(line.slice(8))],
    [{ type: "message", data: { t: "👍" } }]);
  assert.throws(() => createStreamParser("xml"), TypeError);
});

test("the worker protocol: ready, start, transferred chunks, end", () => {
  const posted = [];
  const scope = { onmessage: null, postMessage: (message) => posted.push(message) };
  attachDecoder(scope);
  const send = (data) => scope.onmessage({ data });
  send({ type: "start", format: "sse" });
  send({ type: "chunk", bytes: bytes("data: {\"a\"").buffer });
  send({ type: "chunk", bytes: bytes(":1}\n\ndata: [DONE]\n\n").buffer });
  send({ type: "end" });
  assert.deepEqual(posted, [
    { type: "ready" },
    { type: "events", events: [{ type: "message", data: { a: 1 } }, { type: "done" }] },
    { type: "ended", events: [] },
  ]);
});
