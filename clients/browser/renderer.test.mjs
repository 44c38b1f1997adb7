// The renderer's pure parts under Node.js's test runner, no browser: grapheme hold-back, markdown block splitting
// (checked against markdown-it itself: the split rendering equals the whole one), batching with a fake clock, and
// createRenderer on a minimal fake element.
//   node --test clients/browser/renderer.test.mjs

import { test, mock } from "node:test";
import assert from "node:assert/strict";
import { blockBoundary, createBatcher, createRenderer, splitGraphemes } from "./renderer.js";
import { MarkdownIt } from "../../dev/llm_relay_dev/vendor/markdown.bundle.js";

const md = new MarkdownIt({ html: false });

test("the last grapheme cluster is held back, however it is built", () => {
  assert.deepEqual(splitGraphemes("abc"), ["ab", "c"]);
  assert.deepEqual(splitGraphemes(""), ["", ""]);
  assert.deepEqual(splitGraphemes("ok 👍🏽"), ["ok ", "👍🏽"]); // emoji + skin-tone modifier
  assert.deepEqual(splitGraphemes("a👩‍👩‍👧"), ["a", "👩‍👩‍👧"]); // ZWJ sequence
  assert.deepEqual(splitGraphemes("cafe\u0301"), ["caf", "e\u0301"]); // combining acute accent
  assert.deepEqual(splitGraphemes("x\uD83D"), ["x", "\uD83D"]); // half a surrogate pair
});

test("a cluster split across pushes is never shown in pieces", () => {
  // GIVEN a family emoji cut inside its ZWJ sequence and a letter cut before its combining mark
  const pieces = ["Hi 👩", "\u200D👩\u200D", "👧 e", "\u0301!"];
  const shown = [];
  let held = "";
  for (const piece of pieces) {
    const [complete, rest] = splitGraphemes(held + piece);
    held = rest;
    shown.push(complete);
  }
  shown.push(held);
  // THEN every render ends on a cluster boundary and the whole arrives intact
  assert.deepEqual(shown, ["Hi ", "", "👩‍👩‍👧 ", "e\u0301", "!"]);
});

test("block boundaries: paragraphs and headings split, fences, lists and indented lines do not", () => {
  assert.equal(blockBoundary("# Title\n\nSome text"), 9);
  assert.equal(blockBoundary("# Title\n\n"), 0); // the next block has not begun
  assert.equal(blockBoundary("```js\nconst a = 1;\n\nconst b = 2;\n"), 0); // blank line inside a fence
  assert.equal(blockBoundary("```js\na\n\nb\n```\n\nNext"), 16);
  assert.equal(blockBoundary("- one\n\n- two\n"), 0); // a loose list stays one list
  assert.equal(blockBoundary("- one\n\n  more of one\n"), 0); // a list item's continuation
  assert.equal(blockBoundary("- one\n- two\n\nAfter"), 13);
  assert.equal(blockBoundary("Para\n\n    code\n"), 0);
  assert.equal(blockBoundary("a\n\nb\n\nc", 3), 6);
});

const DOCUMENT = [
  "# Streaming markdown", "", "Intro with *emphasis*, `code` and a [link](https://example.org).", "",
  "## A list", "", "- first", "- second", "  - nested", "", "- loose third", "", "1. one", "2. two", "",
  "```python", "def f(x):", "", "    return x * 2", "```", "", "| a | b |", "|---|---|", "| 1 | 2 |", "",
  "> quoted", "", "> quoted again", "", "Setext", "======", "", "    indented code", "", "Closing <b>bold</b> text.",
  "~~~", "tilde fence ``` inside", "~~~", "",
].join("\n");

test("rendering the completed blocks once and the tail again gives the whole document's HTML", () => {
  // GIVEN the document arriving a few characters at a time
  let committed = 0;
  let blocks = "";
  let source = "";
  for (let i = 0; i < DOCUMENT.length; i += 3) {
    source += DOCUMENT.slice(i, i + 3);
    const boundary = blockBoundary(source, committed);
    assert.ok(boundary >= committed);
    blocks += md.render(source.slice(committed, boundary));
    committed = boundary;
  }
  // THEN the blocks plus the last tail render exactly what the whole renders, and raw HTML stayed text
  const html = blocks + md.render(source.slice(committed));
  assert.equal(html, md.render(DOCUMENT));
  assert.ok(html.includes("&lt;b&gt;bold&lt;/b&gt;"));
  assert.ok(committed > DOCUMENT.length / 2, "most of the document was committed before the end");
});

test("batching: one flush per throttle period, at once when maxBufferSize chunks wait", () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    const flushed = [];
    const batcher = createBatcher({ chunkThrottle: 16, maxBufferSize: 4, requestFrame: null,
                                    flush: (text) => flushed.push(text) });
    batcher.push("a");
    batcher.push("b");
    assert.deepEqual(flushed, []);
    mock.timers.tick(15);
    assert.deepEqual(flushed, []);
    mock.timers.tick(1);
    assert.deepEqual(flushed, ["ab"]);
    for (const piece of ["c", "d", "e", "f"]) batcher.push(piece); // the 4th chunk flushes without waiting
    assert.deepEqual(flushed, ["ab", "cdef"]);
    mock.timers.tick(100);
    assert.deepEqual(flushed, ["ab", "cdef"]);
    batcher.push("g");
    batcher.take();
    mock.timers.tick(100);
    assert.deepEqual(flushed, ["ab", "cdef"]);
  } finally {
    mock.timers.reset();
  }
});

test("batching: with an animation-frame scheduler, one flush per frame", () => {
  const frames = [];
  const flushed = [];
  const batcher = createBatcher({ chunkThrottle: 16, maxBufferSize: 50, requestFrame: (cb) => frames.push(cb),
                                  cancelFrame: () => {}, flush: (text) => flushed.push(text) });
  for (const piece of ["x", "y", "z"]) batcher.push(piece);
  assert.equal(frames.length, 1);
  frames.shift()();
  assert.deepEqual(flushed, ["xyz"]);
});

// Just enough of an element for createRenderer: HTML strings stand in for the DOM.
function fakeElement(doc) {
  const element = {
    ownerDocument: doc, children: [], dataset: {}, className: "", html: "", textContent: "", attributes: {},
    scrollTop: 0, scrollHeight: 0, clientHeight: 0, listeners: {},
    replaceChildren(...nodes) { element.children = nodes; },
    append(...nodes) { element.children.push(...nodes); },
    insertAdjacentHTML(_where, html) { element.html += html; },
    set innerHTML(html) { element.html = html; },
    get innerHTML() { return element.html; },
    setAttribute(name, value) { element.attributes[name] = value; },
    addEventListener(name, listener) { element.listeners[name] = listener; },
  };
  return element;
}

function fakeTarget() {
  const doc = { createElement: () => fakeElement(doc) };
  return fakeElement(doc);
}

const fakeMarkdown = { render: (source) => md.render(source), sanitize: (html) => `[${html}]` };

test("createRenderer: sanitized blocks, the tail re-rendered, the held-back cluster shown at finish", () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    const target = fakeTarget();
    const renders = [];
    const view = createRenderer(target, { markdown: fakeMarkdown, requestFrame: null,
                                          onRender: ({ text }) => renders.push(text) });
    const [blocks, tail] = target.children;
    view.push("# Hi\n\nText 👍");
    mock.timers.tick(16);
    assert.equal(view.text, "# Hi\n\nText "); // the emoji may still get its modifier
    assert.equal(blocks.html, "[<h1>Hi</h1>\n]");
    assert.equal(tail.html, "[<p>Text</p>\n]");
    view.push("🏽");
    view.finish({ termination_reason: "stop" });
    assert.equal(view.text, "# Hi\n\nText 👍🏽");
    assert.equal(blocks.html, "[<h1>Hi</h1>\n][<p>Text 👍🏽</p>\n]");
    assert.equal(tail.html, "");
    assert.equal(target.dataset.state, "done");
    assert.equal(renders.length, 2);
  } finally {
    mock.timers.reset();
  }
});

test("createRenderer: fail shows the reason as text with a retry button; dispose stops rendering", () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    const target = fakeTarget();
    let retried = 0;
    const view = createRenderer(target, { markdown: fakeMarkdown, requestFrame: null });
    view.push("partial");
    view.fail("<b>relay unavailable</b>", { retry: () => { retried += 1; } });
    const notice = target.children[2];
    assert.equal(target.dataset.state, "failed");
    assert.equal(notice.textContent, "<b>relay unavailable</b>"); // text, never HTML
    assert.equal(notice.attributes.role, "alert");
    notice.children[1].listeners.click();
    assert.equal(retried, 1);
    assert.equal(view.text, "partial");

    const other = createRenderer(fakeTarget(), { markdown: fakeMarkdown, requestFrame: null });
    other.push("never shown");
    other.dispose();
    mock.timers.tick(100);
    assert.equal(other.text, "");
  } finally {
    mock.timers.reset();
  }
});
