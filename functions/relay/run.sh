#!/bin/sh
# Entry point under the AWS Lambda Web Adapter (handler: run.sh): uvicorn serves the relay on $PORT and the
# adapter forwards function-URL invocations to it, streaming the response body back.
PATH="/var/lang/bin:$PATH"
export PYTHONPATH="/opt/python:/var/task:${PYTHONPATH:-}"
exec python3 -m uvicorn --factory llm_relay.app:create_app --host 127.0.0.1 --port "${PORT:-8080}" \
    --no-access-log --timeout-keep-alive 60
