"""The APIs clients speak to the relay. Inside, every request is an OpenAI chat request (`chat_request.ChatRequest`)
and every answer a stream of chat-completion chunks: limits, budgets, the ledger, the compliance gate and every kind
of upstream work on those. An `Api` translates its requests into that form before anything is admitted, and renders
the relay's chunks back in its own shape: events, the `stream: false` body, and errors.

- `chat`: OpenAI chat completions (`/v1/chat/completions`, and its NDJSON twin), the relay's own form;
- `responses`: OpenAI's Responses API (`/v1/responses`);
- `messages`: Anthropic's Messages API (`/v1/messages`).
"""
