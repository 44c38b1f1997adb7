// Run in the demo page by llm_relay_dev.browser.stream_markdown (Selenium's execute_async_script), for
// tests/integration/test_browser_rendering.py and bench/browser_rendering.py: stream the mock's markdown document
// through one consumer and measure the main thread while it arrives.
//   consumer "renderer": the browser client (defaults: decoding worker, 16 ms delivery batches) + renderer.js
//   consumer "naive":    every token re-renders the whole accumulated markdown (the same markdown-it + DOMPurify)
//                        and scrolls to the bottom, on the main thread (client with chunkThrottle 0, no worker)
// Long tasks come from a PerformanceObserver ("longtask"), frames from counting requestAnimationFrame callbacks
// between the first and the last token. The last byte is the stream's Resource Timing responseEnd (stamped by the
// network stack, so a busy main thread does not delay it); the text is complete when the last render is done.
// And the work, which a loaded machine changes only by having fewer frames: how often the consumer rendered
// (renderer.js: `onRender`), how many markdown-it renders that took and the longest source one of them was given.
const [args, report] = [arguments[0], arguments[arguments.length - 1]];

(async () => {
  const { createRelayClient } = await import("/llm-relay-client.js");
  const { createRenderer, markdownFrom, splitGraphemes } = await import("/renderer.js");
  const { MarkdownIt, DOMPurify } = await import("/vendor/markdown.bundle.js");
  const markdown = markdownFrom(MarkdownIt, DOMPurify);
  // Both libraries and Intl.Segmenter (its ICU data) initialise on their first call, about 15 ms each once per
  // browser process on the 2-core machine: not what is measured here.
  splitGraphemes("warm up 👍🏽");
  markdown.sanitize(markdown.render("# Warm up\n\n- *a*\n\n```js\nx\n```\n\n| a |\n|---|\n| 1 |\n"));
  // The page's first stream also pays once for the decoding worker, the first fetch and the first layouts: one short
  // stream through the client and the renderer, off the measurement.
  const warm = document.createElement("div");
  document.body.append(warm);
  const warmView = createRenderer(warm, { markdown });
  const warmSummary = await createRelayClient({ baseUrl: location.origin, apiKey: args.key }).streamChat({
    body: { model: "gpt-4o-mini", messages: [{ role: "user", content: "warm up" }],
            mock: { markdown: 2000, chunk_chars: 20, chunk_delay_ms: 1, ttft_ms: 1 } },
    onToken: (text) => warmView.push(text),
  }).done;
  warmView.finish(warmSummary);
  warm.remove();
  await new Promise((resolve) => setTimeout(resolve, 50));

  const box = document.createElement("div");
  box.id = `bench-${args.consumer}`;
  box.style.cssText = "height: 400px; overflow-y: auto; border: 1px solid #999; font: 14px sans-serif;";
  document.body.append(box);

  const longTasks = [];
  const observer = new PerformanceObserver((list) => longTasks.push(...list.getEntries()));
  observer.observe({ type: "longtask" });
  const frames = [];
  let counting = true;
  const frame = (time) => {
    frames.push(time);
    if (counting) requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);

  const start = performance.now();
  let firstToken = null;
  let lastToken = null;
  let capped = false;
  let received = "";
  let view = null;
  let naiveSource = "";
  const work = { shows: 0, pushes: 0, renders: 0, renderedChars: 0, longestRender: 0 };
  const counted = {
    render: (source) => {
      work.renders += 1;
      work.renderedChars += source.length;
      work.longestRender = Math.max(work.longestRender, source.length);
      return markdown.render(source);
    },
    sanitize: markdown.sanitize,
  };
  const naive = (text) => {
    naiveSource += text;
    work.shows += 1;
    box.innerHTML = counted.sanitize(counted.render(naiveSource));
    box.scrollTop = box.scrollHeight;
  };
  if (args.consumer === "renderer") {
    view = createRenderer(box, { markdown: counted, onRender: () => { work.shows += 1; } });
  }

  // The renderer with the client's defaults unless the caller names others (a test that hands it every token).
  const clientOptions = args.consumer === "renderer" ? (args.clientOptions ?? {}) : { chunkThrottle: 0, worker: false };
  const relay = createRelayClient({ ...clientOptions, baseUrl: location.origin, apiKey: args.key });
  const run = relay.streamChat({
    body: { model: "gpt-4o-mini", messages: [{ role: "user", content: "a long answer" }], mock: args.mock },
    onToken: (text) => {
      const now = performance.now();
      firstToken ??= now;
      lastToken = now;
      if (capped) return; // the time cap: stop rendering at once, even inside one long batch of tokens
      if (args.capMs && now - start > args.capMs) {
        capped = true;
        run.cancel();
        return;
      }
      received += text;
      work.pushes += 1;
      if (view) view.push(text);
      else naive(text);
    },
  });
  const summary = await run.done;
  if (view) view.finish(summary);
  const complete = performance.now();
  counting = false;
  longTasks.push(...observer.takeRecords());
  observer.disconnect();

  const streams = performance.getEntriesByType("resource").filter((e) => e.name.endsWith("/api/v1/chat/stream"));
  const responseEnd = streams.length ? streams[streams.length - 1].responseEnd : 0;
  const lastByte = responseEnd > 0 ? responseEnd : lastToken;
  const during = frames.filter((t) => t >= firstToken && t <= lastToken);
  const fps = during.length > 1 ? ((during.length - 1) * 1000) / (during[during.length - 1] - during[0]) : 0;
  const windowed = longTasks.filter((e) => e.startTime + e.duration >= start);
  const text = box.textContent;
  const html = view ? [...box.children].map((child) => child.innerHTML).join("") : box.innerHTML;
  box.remove(); // the next measurement starts from the same page
  report({
    consumer: args.consumer,
    capped,
    receivedChars: received.length,
    received,
    fps,
    framesWhileStreaming: during.length,
    ...work,
    longestTaskMs: windowed.reduce((m, e) => Math.max(m, e.duration), 0),
    longTasks: windowed.map((e) => ({ at: Math.round(e.startTime - firstToken), ms: e.duration })),
    streamingMs: lastToken - firstToken,
    completeAfterLastByteMs: complete - lastByte,
    lastByteFrom: responseEnd > 0 ? "responseEnd" : "last token",
    text,
    html,
    referenceText: Object.assign(document.createElement("div"),
                                 { innerHTML: markdown.sanitize(markdown.render(args.document)) }).textContent,
    referenceHtml: markdown.sanitize(markdown.render(args.document)),
    termination: summary.termination_reason,
  });
})().catch((error) => report({ error: String(error?.stack ?? error) }));
