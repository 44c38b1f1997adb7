// Types of llm-relay-client.js.

/** Which of the client-side measurements the summary carries (all on by default). */
export interface MetricsSwitches {
  ttft: boolean;
  tpot: boolean;
  cancellation: boolean;
  finishReason: boolean;
}

/** The guide's client configuration; every field has a default (DEFAULT_CONFIG). */
export interface RelayClientConfig {
  /** ms without a byte from the relay (heartbeats count) before the stream is aborted and cancelled: 30000. */
  timeout: number;
  /** Retries after the first attempt, before the first byte only (network error, 429, 502, 503): 2. */
  retryAttempts: number;
  /** Base of the exponential backoff with full jitter, in ms: 800. */
  retryDelay: number;
  /** ms between deliveries to onChunk/onToken; 0 delivers every chunk at once: 16. */
  chunkThrottle: number;
  /** Chunks held before a delivery is forced: 50. */
  maxBufferSize: number;
  metrics: MetricsSwitches;
}

export declare const DEFAULT_CONFIG: Readonly<Omit<RelayClientConfig, "metrics"> & { metrics: Readonly<MetricsSwitches> }>;

export type PartialConfig = Partial<Omit<RelayClientConfig, "metrics">> & { metrics?: Partial<MetricsSwitches> };

export declare function resolveConfig(config?: PartialConfig): RelayClientConfig;

/** The part of a Worker the decoder uses; tests pass a fake. */
export interface WorkerLike {
  postMessage(message: unknown, transfer?: Transferable[]): void;
  onmessage: ((event: { data: any }) => void) | null;
  onerror: ((event: any) => void) | null;
  terminate?(): void;
}

export interface RelayClientOptions extends PartialConfig {
  baseUrl: string;
  apiKey: string;
  fetchImpl?: typeof fetch;
  /** "auto" (default): a Web Worker where one exists, else the main thread; false: always the main thread. */
  worker?: "auto" | false | (() => WorkerLike);
  /** The backoff's wait; resolves after `ms`, rejects when `signal` aborts. */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  /** The jitter's source of [0, 1) (Math.random). */
  random?: () => number;
  /** The clock of the client metrics (performance.now). */
  now?: () => number;
}

export type StreamFormat = "ndjson" | "sse";

export interface ChatRequestBody {
  model: string;
  messages: Array<{ role: string; content: unknown; [field: string]: unknown }>;
  [field: string]: unknown;
}

export interface ChatCompletionChunk {
  id: string;
  object: "chat.completion.chunk";
  choices: Array<{
    index: number;
    delta: { role?: string; content?: string | null; [field: string]: unknown };
    finish_reason: string | null;
  }>;
  usage?: Usage | null;
  [field: string]: unknown;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  estimated?: boolean;
  [field: string]: unknown;
}

export interface StreamChatRequest {
  body: ChatRequestBody;
  /** "ndjson" (default): /api/v1/chat/stream; "sse": /v1/chat/completions with stream: true. */
  format?: StreamFormat;
  /** Every chunk object, in order, delivered in throttled batches. */
  onChunk?: (chunk: ChatCompletionChunk) => void;
  /** The text of the first choice's deltas in one delivery batch. */
  onToken?: (text: string) => void;
  clientRequestId?: string;
}

export interface CompleteChatRequest {
  body: ChatRequestBody;
  clientRequestId?: string;
}

/** Measured on the client with performance.now(), from the first attempt's start. */
export interface ClientMetrics {
  duration_ms: number;
  chunks: number;
  retries: number;
  /** Present when metrics.ttft: time to the first content token, null if none came. */
  ttft_ms?: number | null;
  /** Present when metrics.tpot: mean time between content tokens, null with fewer than two. */
  tpot_ms?: number | null;
  /** Present when metrics.cancellation and the run was cancelled (or timed out). */
  cancelled?: true;
  /** Time from cancel() to the relay's answer to the cancel call. */
  cancel_ms?: number | null;
  /** Present when metrics.finishReason and the stream ended with a summary or [DONE]. */
  finish_reason?: string | null;
}

export interface RelaySummary {
  object: "relay.summary";
  id: string | null;
  client_request_id: string;
  finish_reason?: string | null;
  termination_reason: string | null;
  usage?: Usage | null;
  cost_usd?: string;
  ttft_ms?: number;
  tpot_ms?: number;
  duration_ms?: number;
  chunks?: number;
  /** True when the stream ended cleanly but without a finish reason: the answer may be cut short. */
  fallback?: true;
  client: ClientMetrics;
  [field: string]: unknown;
}

export interface ChatCompletion {
  id: string;
  object: "chat.completion";
  choices: Array<{ index: number; message: { role: string; content: string | null }; finish_reason: string | null }>;
  usage?: Usage;
  [field: string]: unknown;
}

export interface RelayRun<T> {
  /** Resolves to the answer, or to a client_cancelled summary after cancel(); rejects with RelayStreamError. */
  readonly done: Promise<T | RelaySummary>;
  /** Abort the fetch and call POST /v1/requests/{client id}/cancel; true when the relay answered 202. */
  cancel(): Promise<boolean>;
  readonly clientRequestId: string;
  /** The relay's x-request-id once its headers arrived. */
  readonly requestId: string | null;
}

export interface RelayClient {
  readonly config: RelayClientConfig;
  streamChat(request: StreamChatRequest): RelayRun<RelaySummary>;
  completeChat(request: CompleteChatRequest): RelayRun<ChatCompletion>;
  /** Cancel every run still going; resolves once the relay answered each cancel call. */
  dispose(): Promise<void>;
  /** How many runs are going. */
  readonly active: number;
}

/**
 * Codes: the relay's (`invalid_api_key`, `rate_limit_exceeded`, `upstream_error`, `deadline`, `budget_exceeded`, ...),
 * and the client's own: `timeout` (no byte for `timeout` ms; the cancel call was sent), `incomplete` (the stream
 * stopped without a summary or [DONE]), `malformed_stream`, `network_error` (no response, retries spent).
 */
export declare class RelayStreamError extends Error {
  constructor(
    error: { message?: string; code?: string; request_id?: string } | undefined,
    status: number,
    details?: { cause?: unknown; partial?: boolean; client?: ClientMetrics; clientRequestId?: string },
  );
  readonly name: "RelayStreamError";
  code: string | null;
  status: number;
  requestId: string | null;
  clientRequestId: string | null;
  /** Some text was delivered before the error. */
  partial: boolean;
  client: ClientMetrics | null;
}

export declare function createRelayClient(options: RelayClientOptions): RelayClient;
export declare function streamChat(options: RelayClientOptions & StreamChatRequest): RelayRun<RelaySummary>;
export declare function completeChat(options: RelayClientOptions & CompleteChatRequest): RelayRun<ChatCompletion>;
/** Milliseconds to wait from `retry-after-ms`, or `Retry-After` (seconds or an HTTP date); null if neither. */
export declare function retryAfterMs(headers: { get(name: string): string | null }, now?: number): number | null;
