"""The `llm-relay` subcommands, one module each; `llm_relay.cli` registers them and runs one."""
