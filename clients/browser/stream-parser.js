// The pure half of decoding: bytes in, parsed events out, no I/O and no clock. The decoding worker and the
// main-thread fallback both run this same parser, so the two paths cannot disagree.
//
// Events:
//   { type: "message", data }   one JSON object: a chunk, the NDJSON relay.summary, or an {"error": ...} line/event
//   { type: "done" }            SSE's `data: [DONE]`
//   { type: "malformed", text } a complete line or event whose data is not JSON
// Heartbeats (NDJSON blank lines, SSE `: ping` comments) produce no event; the caller counts bytes as life.

/** @typedef {"ndjson" | "sse"} StreamFormat */

/**
 * @param {StreamFormat} format
 * @returns {{ push(bytes: Uint8Array): object[], end(): object[] }}
 */
export function createStreamParser(format) {
  if (format !== "ndjson" && format !== "sse") throw new TypeError(`unknown stream format: ${format}`);
  const decoder = new TextDecoder("utf-8");
  const frame = format === "sse" ? sseFramer() : ndjsonFramer();
  let buffer = "";

  function lines(text, final) {
    buffer += text;
    const events = [];
    let index;
    while ((index = buffer.search(/\r\n|\r|\n/)) >= 0) {
      // a lone "\r" at the very end may be the first half of "\r\n": wait for the next bytes
      if (!final && buffer[index] === "\r" && index === buffer.length - 1) break;
      const line = buffer.slice(0, index);
      buffer = buffer.slice(index + (buffer.startsWith("\r\n", index) ? 2 : 1));
      frame.line(line, events);
    }
    if (final) {
      if (buffer) frame.line(buffer, events, true);
      buffer = "";
    }
    return events;
  }

  return {
    push: (bytes) => lines(decoder.decode(bytes, { stream: true }), false),
    end: () => lines(decoder.decode(), true),
  };
}

function parseJson(text) {
  try {
    return { type: "message", data: JSON.parse(text) };
  } catch {
    return { type: "malformed", text };
  }
}

function ndjsonFramer() {
  return {
    line(line, events, unterminated = false) {
      const text = line.trim();
      if (!text) return; // heartbeat or flush nudge
      const event = parseJson(text);
      // an unterminated last line that is not JSON was cut short: the stream ended incomplete, not malformed
      if (unterminated && event.type === "malformed") return;
      events.push(event);
    },
  };
}

function sseFramer() {
  let data = null;
  return {
    line(line, events, unterminated = false) {
      if (unterminated) return; // an event not closed by a blank line is discarded (the SSE rule)
      if (line === "") {
        if (data !== null) events.push(data === "[DONE]" ? { type: "done" } : parseJson(data));
        data = null;
        return;
      }
      if (line.startsWith(":")) return; // comment: `: ping`
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      if (field !== "data") return; // event:, id:, retry: carry nothing the client uses
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      data = data === null ? value : `${data}\n${value}`;
    },
  };
}
