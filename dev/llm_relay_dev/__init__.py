"""Dev tooling for llm-relay, kept out of the Lambda artifact (only `llm_relay` is packaged).

- `devserver`: `make dev`, the relay on loopback with a mock upstream and a local DynamoDB.
- `mock_upstream`: an OpenAI-shaped chat-completions server (tests, the dev server, the benchmark).
- `local_dynamodb`: `make dynamodb`, moto's DynamoDB with one request at a time and atomic transactions.
- `table`: the relay table built from `template.yaml` itself; `dev_key`: the dev key.

Needs the `dev` extra (moto, PyYAML); nothing in `llm_relay` imports this package.
"""

from __future__ import annotations
