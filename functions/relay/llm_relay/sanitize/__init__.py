"""The compliance gate: a streaming sanitizer that redacts or blocks PII and secrets in prompts and answers.

Only the policy (`policy.py`, pure and light) is imported at start-up; the recognizers and the stream sanitizer
are imported when a request's policy turns them on (`load`), so a relay with the gate off never pays for them.
"""
