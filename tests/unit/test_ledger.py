"""The ledger's pure parts: what admission records on the request item, a checkpoint, the `lost` record and the
settlement built from them (the same builder as finalization)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from llm_relay.dynamo import layout
from llm_relay.ledger import checkpoint, lease_until, lost_record, renewal_interval, settlement_of
from llm_relay.limits import Ticket
from llm_relay.limits.rules import Window
from llm_relay.metering import StreamMeter, Usage
from llm_relay.pricing import PriceTable

PRICES = PriceTable.load(None)
NOW = 1_700_000_030.0


def _admitted(ticket: Ticket) -> dict[str, Any]:
    base = layout.request_item("req_1", "rk_a", "gpt-4o-mini", 3600)
    return layout.admitted_item(
        base, lease_until=1_700_000_090, started_epoch=NOW, mode="sse", prompt_tokens=7, ticket=ticket
    )


def test_admission_records_the_lease_what_it_took_and_a_first_checkpoint() -> None:
    # GIVEN an admission that took a slot, a request and 120 tokens of the minute
    item = _admitted(Ticket(minute=28333333, reserve=120, lease="l_req_1", settle_tokens=True))
    # THEN the item is in both sparse indexes, and the reconciler can give back exactly what was taken
    assert item["open_shard"] == layout.open_shard("req_1") and item["lease_key"] == "rk_a"
    assert item["lease_until"] == 1_700_000_090 and item["cp_completion"] == 0 and item["cp_prompt"] == 7
    ticket = layout.ticket_of(item)
    assert (ticket.minute, ticket.reserve, ticket.lease, ticket.settle_tokens) == (28333333, 120, "req_1", True)


def test_a_checkpoint_holds_the_meters_progress() -> None:
    meter = StreamMeter(started_at=0.0)
    for i in range(3):
        meter.observe({"choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}, 0.5 + i)
    point = layout.checkpoint_attributes(checkpoint(meter, 11, NOW, "bedrock-eu"))
    assert point["cp_completion"] == 3 and point["cp_source"] == "estimated"
    assert point["cp_ttft_ms"] == Decimal("500.0") and point["cp_at"] == Decimal(str(NOW))
    assert point["cp_upstream"] == "bedrock-eu" and point["cp_prompt"] == 11
    assert "cp_upstream" not in layout.checkpoint_attributes(
        checkpoint(meter, 0, NOW)
    )  # before an upstream answered: nothing to name


def test_the_lost_record_charges_the_last_checkpoint_estimated() -> None:
    # GIVEN a request item checkpointed at 40 completion tokens, 12 s after it started
    item = {**_admitted(Ticket(lease="l"))}
    item.update({"cp_completion": 40, "cp_at": Decimal(str(NOW + 12)), "cp_ttft_ms": Decimal("80"), "cp_upstream": "u"})
    # WHEN the reconciler builds its record
    record = lost_record(layout.unfinished_of(item), PRICES)
    # THEN: reason lost, estimated, priced from the checkpoint, started when the request started
    assert (record.termination_reason, record.usage_source) == ("lost", "estimated")
    assert (record.prompt_tokens, record.completion_tokens) == (7, 40)
    assert record.cost_usd == PRICES("gpt-4o-mini", Usage(7, 40)) and record.cost_usd
    assert record.started_epoch == NOW and record.duration_ms == Decimal("12000.0") and record.mode == "sse"
    assert record.upstream == "u"  # the upstream that was streaming, from its checkpoint


def test_a_lost_request_is_priced_as_the_model_that_was_answering_it() -> None:
    # GIVEN a request for an alias without a price, routed to gpt-4o (first route) and answered by gpt-4o-mini
    base = layout.request_item("req_1", "rk_a", "my-alias", 3600)
    item = layout.admitted_item(
        {**base, "billed_as": "gpt-4o"}, lease_until=1, started_epoch=NOW, mode="sse", prompt_tokens=7, ticket=Ticket()
    )
    # THEN before any answer it is priced as the first route's model, then as the answering one's
    assert lost_record(layout.unfinished_of(item), PRICES).cost_usd == PRICES("gpt-4o", Usage(7, 0))
    answering = {**item, "cp_completion": 40, "cp_billed_as": "gpt-4o-mini"}
    assert lost_record(layout.unfinished_of(answering), PRICES).cost_usd == PRICES("gpt-4o-mini", Usage(7, 40))
    assert (
        lost_record(layout.unfinished_of(answering), PRICES).model == "my-alias"
    )  # the record keeps the name the client asked for


def test_settlement_gives_back_the_slot_and_books_the_tokens_difference() -> None:
    record = lost_record(layout.unfinished_of(_admitted(Ticket())), PRICES)
    ticket = Ticket(minute=Window.at(NOW).minute, reserve=100, lease="req_1", settle_tokens=True)
    same_minute = settlement_of(record, ticket, 90, NOW)
    assert (same_minute.lease, same_minute.tokens_delta, same_minute.tokens_minute) == ("req_1", 7 - 100, ticket.minute)
    # a minute later the refund is dropped (that window is over)
    later = settlement_of(record, ticket, 90, NOW + 60)
    assert later.tokens_delta == 0 and later.tokens_minute == Window.at(NOW).minute + 1
    assert settlement_of(record, None, 90, NOW).lease is None


def test_leases_are_renewed_every_third_of_their_length() -> None:
    assert renewal_interval(60) == 20 and lease_until(NOW + 0.2, 60) == int(NOW) + 61
