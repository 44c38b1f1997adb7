// llm-relay renderer: show a streamed answer as markdown without stalling the page.
//
// A naive consumer re-renders the whole accumulated markdown on every token: the work per token grows with the
// answer, so a long answer ends in long tasks and dropped frames. This renderer
//   - batches tokens and renders at most once per animation frame (every `chunkThrottle` ms where there is no
//     requestAnimationFrame), at once when `maxBufferSize` chunks are waiting;
//   - never shows half a grapheme cluster (an emoji with its modifier, a ZWJ sequence, a letter and its combining
//     mark): the last cluster waits for the next render, or for finish();
//   - renders completed markdown blocks once and keeps them; only the open tail block is re-rendered per frame;
//   - never lets the model's text become HTML or script: the page passes `markdown = { render, sanitize }`, e.g.
//     markdown-it with `html: false` and DOMPurify.sanitize (see markdownFrom()), and every HTML string goes
//     through `sanitize` before it reaches the DOM.
// It imports nothing, so its pure parts (splitGraphemes, blockBoundary, createBatcher) run in Node.js tests.
//
//   import { createRenderer, markdownFrom } from "./renderer.js";
//   import { MarkdownIt, DOMPurify } from "./markdown.bundle.js";
//   const view = createRenderer(output, { markdown: markdownFrom(MarkdownIt, DOMPurify) });
//   const run = streamChat({ ..., onToken: (text) => view.push(text) });
//   run.done.then((summary) => view.finish(summary), (error) => view.fail(error.message, { retry: send }));

const FENCE = /^ {0,3}(`{3,}|~{3,})/;
const LIST_MARKER = /^([-*+]|\d{1,9}[.)])(\s|$)/;

/**
 * Cut `text` before its last grapheme cluster, which the next piece of text may still extend.
 * @param {string} text
 * @param {Intl.Segmenter} [segmenter]
 * @returns {[string, string]} the complete clusters, and the held-back last one
 */
export function splitGraphemes(text, segmenter = defaultSegmenter()) {
  if (!text) return ["", ""];
  let last = 0;
  for (const { index } of segmenter.segment(text)) last = index;
  return [text.slice(0, last), text.slice(last)];
}

let segmenterInstance = null;
function defaultSegmenter() {
  segmenterInstance ??= new Intl.Segmenter(undefined, { granularity: "grapheme" });
  return segmenterInstance;
}

/**
 * The end of the completed markdown blocks in `source`, scanning from `from` (a previous boundary, so outside any
 * code fence): the offset after the last blank line that markdown cannot carry on across. A blank line closes a
 * block when the next line has begun, is not indented (a list item's continuation or indented code) and does not
 * continue a list above it; a blank line inside a fenced code block closes nothing. Rendering source[from:boundary]
 * alone gives the same HTML as rendering it as part of the whole (reference-style link definitions that come later
 * are the one exception, and only change links into text).
 * @param {string} source
 * @param {number} [from]
 * @returns {number}
 */
export function blockBoundary(source, from = 0) {
  let boundary = from;
  let fence = null; // the opening fence's run of ` or ~ while inside a fenced block
  let blank = false; // the previous complete line was blank
  let listInBlock = false; // a list item began since the last boundary
  let start = from;
  for (let end = source.indexOf("\n", start); end >= 0; start = end + 1, end = source.indexOf("\n", start)) {
    const line = source.slice(start, end);
    if (blank && !fence && line.trim() && !/^[ \t]/.test(line) && !(listInBlock && LIST_MARKER.test(line))) {
      boundary = start;
      listInBlock = false;
    }
    const marker = FENCE.exec(line);
    if (fence) {
      if (marker && marker[1][0] === fence[0] && marker[1].length >= fence.length && !line.trim().slice(marker[1].length).trim()) fence = null;
    } else if (marker) {
      fence = marker[1];
    }
    if (!fence && LIST_MARKER.test(line)) listInBlock = true;
    blank = !fence && !line.trim();
  }
  // The last line has not ended yet, but its first character already says whether a block begins there.
  const tail = source.slice(start);
  if (blank && !fence && tail.trim() && !/^[ \t]/.test(tail) && !(listInBlock && /^([-*+]|\d)/.test(tail))) {
    boundary = start;
  }
  return boundary;
}

/**
 * Batch pushed text into flushes: once per animation frame (or `chunkThrottle` ms), at once at `maxBufferSize`
 * chunks. The scheduler is looked up when needed, so tests can use fake timers.
 * @param {{chunkThrottle: number, maxBufferSize: number, flush: (text: string) => void,
 *          requestFrame?: ((cb: () => void) => unknown) | null, cancelFrame?: (handle: unknown) => void}} options
 */
export function createBatcher({ chunkThrottle, maxBufferSize, flush, requestFrame, cancelFrame }) {
  const frame = requestFrame === undefined ? globalThis.requestAnimationFrame?.bind(globalThis) : requestFrame;
  const cancelScheduled = requestFrame === undefined ? globalThis.cancelAnimationFrame?.bind(globalThis) : cancelFrame;
  let buffered = [];
  let handle = null;

  function take() {
    if (handle !== null) (frame ? cancelScheduled : clearTimeout)(handle);
    handle = null;
    const text = buffered.join("");
    buffered = [];
    return text;
  }
  function drain() {
    const text = take();
    if (text) flush(text);
  }
  return {
    push(text) {
      if (!text) return;
      buffered.push(text);
      if (buffered.length >= maxBufferSize) drain();
      else if (handle === null) handle = frame ? frame(drain) : setTimeout(drain, chunkThrottle);
    },
    drain,
    /** Drop the scheduled flush and hand back what was buffered. */
    take,
    get pending() { return buffered.length; },
  };
}

/**
 * markdown-it (with `html: false`: raw HTML in the model's text stays text) and DOMPurify, as the renderer's pair.
 * @param {new (options: object) => {render: (src: string) => string}} MarkdownIt
 * @param {{sanitize: (html: string, config?: object) => string}} DOMPurify
 */
export function markdownFrom(MarkdownIt, DOMPurify) {
  const md = new MarkdownIt({ html: false, linkify: false, typographer: false });
  return { render: (source) => md.render(source), sanitize: (html) => DOMPurify.sanitize(html) };
}

/**
 * Render a streamed answer into `target`.
 * @param {HTMLElement} target
 * @param {{chunkThrottle?: number, maxBufferSize?: number,
 *          markdown: {render: (source: string) => string, sanitize: (html: string) => string},
 *          autoScroll?: boolean, requestFrame?: ((cb: () => void) => unknown) | null,
 *          cancelFrame?: (handle: unknown) => void, onRender?: (info: {text: string, final: boolean}) => void}} options
 */
export function createRenderer(target, { chunkThrottle = 16, maxBufferSize = 50, markdown, autoScroll = true,
                                         requestFrame, cancelFrame, onRender } = {}) {
  if (!markdown?.render || !markdown?.sanitize) throw new TypeError("createRenderer needs markdown: {render, sanitize}");
  const doc = target.ownerDocument;
  const blocks = doc.createElement("div");
  const tail = doc.createElement("div");
  blocks.className = "llm-relay-blocks";
  tail.className = "llm-relay-tail";
  target.replaceChildren(blocks, tail);
  target.dataset.state = "streaming";
  let source = ""; // all the text rendered so far
  let committed = 0; // source[0:committed] is in `blocks`, rendered for good
  let held = ""; // a trailing grapheme cluster not yet shown
  let disposed = false;
  const batcher = createBatcher({ chunkThrottle, maxBufferSize, requestFrame, cancelFrame,
                                  flush: (text) => { if (!disposed) show(text, false); } });

  // Scrolling right after a render would force a layout of the whole answer inside the task; at the next frame the
  // layout is already done (the scroll shows one frame later). A final render scrolls at once.
  const nextFrame = requestFrame === undefined ? globalThis.requestAnimationFrame?.bind(globalThis) : requestFrame;
  let scrollPending = false;
  function scrollToBottom(now) {
    if (now || !nextFrame) {
      target.scrollTop = target.scrollHeight;
      return;
    }
    if (scrollPending) return;
    scrollPending = true;
    nextFrame(() => {
      scrollPending = false;
      if (!disposed) target.scrollTop = target.scrollHeight;
    });
  }

  const html = (markdownSource) => markdown.sanitize(markdown.render(markdownSource));

  function show(text, final) {
    const [complete, rest] = final ? [held + text, ""] : splitGraphemes(held + text);
    held = rest;
    const atBottom = autoScroll && (scrollPending || target.scrollHeight - target.scrollTop - target.clientHeight < 24);
    source += complete;
    const boundary = final ? source.length : blockBoundary(source, committed);
    if (boundary > committed) {
      blocks.insertAdjacentHTML("beforeend", html(source.slice(committed, boundary)));
      committed = boundary;
    }
    tail.innerHTML = committed < source.length ? html(source.slice(committed)) : "";
    if (atBottom) scrollToBottom(final);
    onRender?.({ text: source, final });
  }

  return {
    /** Buffer a piece of the answer; it shows at the next frame. */
    push(text) {
      if (!disposed) batcher.push(text);
    },
    /** Show everything now, the held-back cluster too; the answer is complete. */
    finish(summary) {
      if (disposed) return;
      show(batcher.take(), true);
      target.dataset.state = summary?.termination_reason === "client_cancelled" ? "stopped" : "done";
    },
    /** Show what arrived, then a visible failure notice (text only) with a retry button when `retry` is given. */
    fail(reason, { retry } = {}) {
      if (disposed) return;
      show(batcher.take(), true);
      const notice = doc.createElement("div");
      notice.className = "llm-relay-fallback";
      notice.setAttribute("role", "alert");
      notice.textContent = String(reason ?? "the answer could not be completed");
      if (retry) {
        const button = doc.createElement("button");
        button.type = "button";
        button.className = "llm-relay-retry";
        button.textContent = "Retry";
        button.addEventListener("click", () => retry());
        notice.append(" ", button);
      }
      target.append(notice);
      target.dataset.state = "failed";
    },
    /** Stop: drop what is buffered and render nothing more. The DOM stays as it is. */
    dispose() {
      disposed = true;
      batcher.take();
      held = "";
    },
    /** The text shown so far (without a held-back cluster or buffered chunks). */
    get text() { return source; },
  };
}
