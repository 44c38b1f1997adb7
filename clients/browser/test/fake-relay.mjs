// A fake `fetch` that plays the relay: scripted answers per attempt, recorded calls, a cancel route answering 202,
// and streamed bodies that error when the request's signal aborts (as a real fetch's body does).

const encoder = new TextEncoder();

export const abortError = () => new DOMException("The operation was aborted.", "AbortError");

/**
 * @param {Array<(init: RequestInit) => Response | Promise<Response>>} answers one per attempt, in order
 */
export function fakeRelay(answers) {
  const calls = [];
  const cancels = [];
  let next = 0;
  const fetchImpl = async (url, init) => {
    if (url.includes("/cancel")) {
      cancels.push({ url, init });
      return new Response('{"status":"cancelling"}', { status: 202 });
    }
    calls.push({ url, init, body: JSON.parse(init.body), clientId: init.headers["x-client-request-id"] });
    const answer = answers[Math.min(next, answers.length - 1)];
    next += 1;
    return answer(init);
  };
  return { fetchImpl, calls, cancels };
}

/** A 2xx streamed answer: `parts` are strings or byte arrays, sent `gapMs` apart; `hang` keeps it open after. */
export function streamed(parts, { status = 200, headers = {}, gapMs = 0, hang = false } = {}) {
  return (init) => {
    const chunks = parts.map((part) => (typeof part === "string" ? encoder.encode(part) : part));
    const body = new ReadableStream({
      start(controller) {
        init.signal?.addEventListener("abort", () => controller.error(abortError()), { once: true });
      },
      async pull(controller) {
        if (gapMs) await new Promise((resolve) => setTimeout(resolve, gapMs));
        if (init.signal?.aborted) return;
        if (chunks.length) controller.enqueue(chunks.shift());
        else if (hang) await new Promise(() => {}); // silent until aborted
        else controller.close();
      },
    });
    return new Response(body, { status, headers: { "x-request-id": "req_fake", ...headers } });
  };
}

/** An error answer in the relay's shape. */
export function failing(status, code, headers = {}) {
  return () => new Response(JSON.stringify({ error: { message: code, code } }), { status, headers });
}

/** A fetch that never answers until aborted (an upstream holding its headers). */
export function silent() {
  return (init) => new Promise((_, reject) => {
    init.signal.addEventListener("abort", () => reject(abortError()), { once: true });
  });
}

/** A network error before any response. */
export function unreachable() {
  return () => Promise.reject(new TypeError("fetch failed"));
}

export const chunk = (content, finishReason = null) => JSON.stringify({
  id: "req_fake", object: "chat.completion.chunk",
  choices: [{ index: 0, delta: content === null ? {} : { content }, finish_reason: finishReason }],
});

export const summary = (fields = {}) => JSON.stringify({
  object: "relay.summary", id: "req_fake", finish_reason: "stop", termination_reason: "stop",
  usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3, estimated: false }, ...fields,
});

/** The client options every test starts from: main-thread decoding, no throttle, instant backoff. */
export function options(relay, extra = {}) {
  return { baseUrl: "http://relay.test/", apiKey: "lr-test", fetchImpl: relay.fetchImpl, worker: false,
           chunkThrottle: 0, sleep: async () => {}, ...extra };
}

export const body = { model: "gpt-4o-mini", messages: [{ role: "user", content: "Hello" }] };
