// Types for renderer.js: render a streamed answer as markdown, once per frame, safely.

/** The markdown pair the renderer is given: `render` markdown to HTML, `sanitize` that HTML before the DOM. */
export interface MarkdownPair {
  render(source: string): string;
  sanitize(html: string): string;
}

export interface RendererOptions {
  /** The markdown renderer and sanitizer; see markdownFrom(). */
  markdown: MarkdownPair;
  /** ms between renders where there is no requestAnimationFrame (default 16). */
  chunkThrottle?: number;
  /** Chunks buffered before a render is forced (default 50). */
  maxBufferSize?: number;
  /** Keep the target scrolled to the bottom while it is there (default true). */
  autoScroll?: boolean;
  /** The frame scheduler (default requestAnimationFrame; null: setTimeout every chunkThrottle ms). */
  requestFrame?: ((callback: () => void) => unknown) | null;
  cancelFrame?: (handle: unknown) => void;
  /** Called after every render with the text shown so far. */
  onRender?: (info: { text: string; final: boolean }) => void;
}

export interface Renderer {
  /** Buffer a piece of the answer; it shows at the next frame. */
  push(text: string): void;
  /** Show everything now; `data-state` becomes "done" ("stopped" for a client_cancelled summary). */
  finish(summary?: { termination_reason?: string } | null): void;
  /** Show what arrived, then a notice with `reason` as text and a Retry button when `retry` is given. */
  fail(reason: unknown, options?: { retry?: () => unknown }): void;
  /** Render nothing more; the DOM stays as it is. */
  dispose(): void;
  /** The text shown so far. */
  readonly text: string;
}

export function createRenderer(target: HTMLElement, options: RendererOptions): Renderer;

/** markdown-it (`html: false`) and DOMPurify.sanitize as a MarkdownPair. */
export function markdownFrom(
  MarkdownIt: new (options: object) => { render(source: string): string },
  DOMPurify: { sanitize(html: string, config?: object): string },
): MarkdownPair;

/** Cut text before its last grapheme cluster: [complete clusters, the held-back last one]. */
export function splitGraphemes(text: string, segmenter?: Intl.Segmenter): [string, string];

/** The end of the completed markdown blocks in source, scanning from `from` (a previous boundary). */
export function blockBoundary(source: string, from?: number): number;

export interface Batcher {
  push(text: string): void;
  drain(): void;
  take(): string;
  readonly pending: number;
}

export function createBatcher(options: {
  chunkThrottle: number;
  maxBufferSize: number;
  flush: (text: string) => void;
  requestFrame?: ((callback: () => void) => unknown) | null;
  cancelFrame?: (handle: unknown) => void;
}): Batcher;
