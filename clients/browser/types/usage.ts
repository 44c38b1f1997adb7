// A typed use of the package, checked by `npm run typecheck` (never run): the declarations must admit it.
import {
  completeChat,
  createRelayClient,
  DEFAULT_CONFIG,
  RelayStreamError,
  type ClientMetrics,
  type RelaySummary,
} from "llm-relay-client";

export async function example(output: { append(text: string): void }): Promise<ClientMetrics | null> {
  const relay = createRelayClient({ baseUrl: "http://127.0.0.1:8080", apiKey: "lr-key", timeout: 10_000,
                                    metrics: { tpot: false } });
  const timeout: number = relay.config.timeout + DEFAULT_CONFIG.retryDelay;
  const run = relay.streamChat({
    body: { model: "gpt-4o-mini", messages: [{ role: "user", content: "Hello" }] },
    format: "sse",
    onToken: (text) => output.append(text),
    onChunk: (chunk) => void chunk.choices[0]?.finish_reason,
  });
  const stop: Promise<boolean> = run.cancel();
  try {
    const summary: RelaySummary = await run.done;
    if (summary.fallback) output.append(" [the answer may be cut short]");
    return summary.client;
  } catch (error) {
    if (error instanceof RelayStreamError && error.code === "timeout") return error.client;
    throw error;
  } finally {
    await stop;
    await relay.dispose();
    const answer = await completeChat({ baseUrl: "http://127.0.0.1:8080", apiKey: "lr-key", body: {
      model: "gpt-4o-mini", messages: [] } }).done;
    output.append(String(answer.id ?? timeout));
  }
}
