"""The upstreams the relay can send a chat completion to: one `Dialect` per kind (`base`), the shared HTTP exchange
(`http`), the upstream table (`table`), and the routing of a model to its upstream and fallbacks (`router`)."""
