#!/bin/sh
# Entry point under the AWS Lambda Web Adapter (handler: run.sh): uvicorn serves the relay on $PORT and the
# adapter forwards function-URL invocations to it, streaming the response body back. llm_relay.serve refuses to
# start (exit 2, one line on stderr) without RELAY_UPSTREAM_URL.
PATH="/var/lang/bin:$PATH"
export PYTHONPATH="/opt/python:/var/task:${PYTHONPATH:-}"
exec python3 -m llm_relay.serve
