"""Budget reservations (pure): what a request may cost at worst, reserved before its tokens are produced.

A budget is checked against `committed_usd` = spend + outstanding reservations. Admission reserves the
request's worst case: its prompt (an upper estimate, `conservative_prompt_tokens`) at the input price, plus the
completion tokens it may produce before its next reservation at the output price. Those are `max_tokens` (times
`n`) when the request sets a cap below one increment, else one increment (`RELAY_BUDGET_INCREMENT_TOKENS`). While
it streams, the next increment is reserved ahead of need (`extend_at`, a quarter of an increment before the reserved
tokens run out), so the stream never waits for it, but never past the request's cap: what the cap allows was
reserved by then, and a request that reserved its whole cap at admission writes nothing more unless its upstream
overruns the cap (then at need only, `OVERRUN_TOKENS` at a time). Settlement swaps the whole reservation for the
actual cost.

DynamoDB conditions cannot add, so "committed + amount <= budget" is written `committed <= budget - amount`
(`room`). No I/O, no clocks: the caller passes the day and month in.

A key with `shards` spreads its spend over that many items per period, so that no one item takes every request's
writes. The key's own item (shard 0) is the bank: its budget condition is as above, and `committed_usd` there also
counts the blocks it handed to the other shards (`granted_usd`). Each other shard item reserves against its own
`headroom_usd` (condition `headroom_usd >= amount`) and, when that cannot cover a reservation, takes a block from the
bank in one transaction (the bank's condition: the block fits its budget). The shards together never commit more
than the budget; what a shard was given and did not use stays unused until the period ends (at most a block each).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..pricing import PER_TOKENS, ModelPrice
from .rules import Limits, SpendPeriods

DEFAULT_INCREMENT_TOKENS = 1024
PROMPT_BYTES_PER_TOKEN = 3  # conservative: English runs ~4 characters a token, CJK about 1 (3 UTF-8 bytes)
# The chat template's framing, the most of the priced providers' templates: per message, Llama 3's header and
# end-of-turn (`<|start_header_id|>`, the role, `<|end_header_id|>`, the blank line, `<|eot_id|>`: 5; ChatML's is 5,
# OpenAI's 3 and the role); per request, Llama 3's `<|begin_of_text|>` and the assistant header that primes the
# reply (5; OpenAI's priming is 3). "hi" is then 11, what Llama 3 bills for it (OpenAI bills 8).
PROMPT_TOKENS_PER_MESSAGE = 5
PROMPT_TOKENS_PER_REQUEST = 5
BLOCKS_PER_SHARD = 4  # a shard of a budgeted key takes a quarter of its even share of the budget at a time
OVERRUN_TOKENS = 64  # past the request's cap, at need only: a step that a tokenizer's rounding rarely needs twice


@dataclass(frozen=True, slots=True)
class BudgetPeriod:
    """One spend item a reservation is held on: its period (`D#<day>`, `M#<month>`) and its budget (None: the key
    has no budget for this period; the reservation is held there all the same, unconditionally, so that
    `committed_usd` always means spend + reservations on both items and settlement and release treat both alike)."""

    limit: str  # "daily_budget_usd" or "monthly_budget_usd"
    period: str
    budget: Decimal | None
    shard: int = 0  # the key's shard whose spend item holds the reservation (0: the key's own item, the bank)
    shards: int = 1

    @property
    def item(self) -> str:
        """The spend item's period: the key's own (`D#<day>`), or one shard's (`D#<day>#<shard>`)."""
        return shard_period(self.period, self.shard)

    def block(self, amount: Decimal) -> Decimal:
        """What a shard takes from the bank when its headroom cannot cover `amount`: a share of the budget small
        enough that the shards' unused headroom stays a small part of it, never less than `amount`."""
        if self.budget is None:
            return amount
        return max(amount, self.budget / (self.shards * BLOCKS_PER_SHARD))


def shard_period(period: str, shard: int) -> str:
    return period if shard == 0 else f"{period}#{shard}"


def periods_of(limits: Limits, now_s: float, shard: int = 0, shards: int | None = None) -> tuple[BudgetPeriod, ...]:
    """The day and month of a request admitted at `now_s`, on the key's `shard` of `shards` (default: the limits' own
    count; a shard's share of the limits passes the key's), if the key has a budget at all (else none)."""
    if limits.daily_budget_usd is None and limits.monthly_budget_usd is None:
        return ()
    periods, count = SpendPeriods.at(now_s), limits.shard_count if shards is None else shards
    return (
        BudgetPeriod("daily_budget_usd", periods.day, limits.daily_budget_usd, shard, count),
        BudgetPeriod("monthly_budget_usd", periods.month, limits.monthly_budget_usd, shard, count),
    )


def conservative_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """An upper estimate of the prompt's tokens: each message's text (content, name, tool calls) at UTF-8 bytes / 3,
    rounded up (a short text is a whole token), plus the chat template's framing (`PROMPT_TOKENS_PER_MESSAGE`,
    `PROMPT_TOKENS_PER_REQUEST`). It over-reserves English by about a third (released at settlement), covers
    scripts that tokenize densely, and reserves a very short prompt at least at what the priced providers'
    templates make of it. docs/limits.md says where it can still be low (tool definitions, images, text a provider
    adds to the prompt itself)."""
    text = sum(-(-_text_bytes(message) // PROMPT_BYTES_PER_TOKEN) for message in messages)
    return text + PROMPT_TOKENS_PER_MESSAGE * len(messages) + PROMPT_TOKENS_PER_REQUEST


def _text_bytes(message: dict[str, Any]) -> int:
    """The UTF-8 size of the text a message puts in the prompt: its content (or content parts), its name, and its
    tool calls' names and arguments."""
    content = message.get("content")
    texts = [content] if isinstance(content, str) else []
    if isinstance(content, list):
        texts += [str(part.get("text", "")) for part in content if isinstance(part, dict)]
    if isinstance(message.get("name"), str):
        texts.append(message["name"])
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            texts += [value for value in function.values() if isinstance(value, str)]
    return sum(len(text.encode()) for text in texts)


def first_completion_reservation(max_tokens: int | None, increment: int, choices: int = 1) -> int:
    """Completion tokens reserved at admission: the request's own cap when it is below one increment, else one
    increment (`choices`: the request's `n`; every choice may run to the cap)."""
    cap = None if max_tokens is None else max_tokens * choices
    return cap if cap is not None and cap < increment else increment


def tokens_cost(price: ModelPrice, prompt_tokens: int, completion_tokens: int) -> Decimal:
    """The worst-case cost of so many tokens: prompt at the (uncached) input price, completion at the output price."""
    return (prompt_tokens * price.input + completion_tokens * price.output) / PER_TOKENS


def room(budget: Decimal, amount: Decimal) -> Decimal:
    """The largest committed amount that still admits `amount` more (negative: it never fits)."""
    return budget - amount


@dataclass(slots=True)
class Reservation:
    """What one request holds against its budgets: reserved completion tokens and the USD reserved in all
    (admission plus extensions). Mutable: the stream extends it; finalization settles `usd`."""

    price: ModelPrice
    periods: tuple[BudgetPeriod, ...]
    increment: int
    tokens: int
    usd: Decimal
    cap: int | None = None  # max_tokens * n: never reserve past it in one step
    extensions: int = field(default=0)
    uncertain: bool = field(default=False)  # an extension's outcome is unknown: settle what the request item holds

    @classmethod
    def open(
        cls,
        price: ModelPrice,
        periods: tuple[BudgetPeriod, ...],
        *,
        prompt_tokens: int,
        max_tokens: int | None,
        increment: int,
        choices: int = 1,
    ) -> Reservation:
        tokens = first_completion_reservation(max_tokens, increment, choices)
        cap = None if max_tokens is None else max_tokens * choices
        return cls(price, periods, increment, tokens, tokens_cost(price, prompt_tokens, tokens), cap)

    @property
    def extend_at(self) -> int:
        """Tokens produced at which the next extension is asked for: a quarter increment before the reserved tokens
        run out, while they are below the request's cap; at the cap, only once they are used up (an upstream that
        overruns its cap, or a count that rounds past it), never ahead of need."""
        if self.cap is not None and self.tokens >= self.cap:
            return self.tokens + 1
        return max(0, self.tokens - max(1, self.increment // 4))

    def next_tokens(self) -> int:
        """The size of the next extension: one increment, or what is left of the request's cap when that is
        smaller; past the cap, `OVERRUN_TOKENS` (still reserved before they pass)."""
        if self.cap is None:
            return self.increment
        left = self.cap - self.tokens
        return min(left if left > 0 else OVERRUN_TOKENS, self.increment)

    def cost_of(self, tokens: int) -> Decimal:
        return tokens_cost(self.price, 0, tokens)

    def grant(self, tokens: int, usd: Decimal) -> None:
        self.tokens += tokens
        self.usd += usd
        self.extensions += 1
