"""`llm-relay keys create|list|show|update|revoke|rotate|set-limits|autoshard`: API keys. The plain key is printed
once, at creation or rotation; the table holds its hash. A key's own limits and sanitizer policy sit on top of the
deployment's: its limits replace the configured defaults, its sanitizer policy can only be stricter."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..keys import ISO, ApiKey, generate_key, generate_key_id, hash_key, now_iso
from ..limits.rules import LIMIT_NAMES, Limits
from ..sanitize.policy import KeyPolicy, Policy
from . import options, sanitize_view
from .common import CliError
from .output import jsonable, plain, print_json, print_table, printable

if TYPE_CHECKING:
    from ..dynamo import KeyStore, Stores
    from ..settings import Settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="create, list, show, revoke and rotate keys, set their limits and policy")
    sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    create = sub.add_parser("create", help="create a key; prints the plain key once")
    create.add_argument("--name", required=True, type=options.name, help="who or what the key is for")
    create.add_argument("--models", type=options.models, default=None, help="comma-separated allow-list (default: all)")
    create.add_argument("--expires-at", type=options.future_expiry, default=None, help=options.EXPIRY_HELP)
    options.limit_options(create)
    options.sanitize_options(create)
    create.set_defaults(run=_create)

    sub.add_parser("list", help="list keys (never the plain keys)").set_defaults(run=_list)

    show = sub.add_parser("show", help="one key: its own limits and sanitizer policy, and those in force")
    show.add_argument("key_id", type=options.key_id)
    show.set_defaults(run=_show)

    revoke = sub.add_parser("revoke", help="revoke a key (effective within the auth cache TTL)")
    revoke.add_argument("key_id", type=options.key_id)
    revoke.set_defaults(run=_revoke)

    rotate = sub.add_parser("rotate", help="a new secret for a key; the old one works for --grace minutes more")
    rotate.add_argument("key_id", type=options.key_id)
    rotate.add_argument("--grace", type=options.minutes, default=60.0, help="minutes the old secret keeps working (60)")
    rotate.set_defaults(run=_rotate)

    set_limits = sub.add_parser("set-limits", help="set or clear a key's own limits and expiry")
    _change_options(set_limits, sanitize=False)
    set_limits.set_defaults(run=_set_limits)

    update = sub.add_parser("update", help="set or clear a key's own limits, expiry and sanitizer policy")
    _change_options(update, sanitize=True)
    update.set_defaults(run=_update)

    autoshard = sub.add_parser(
        "autoshard",
        help="measure each rated key's new requests a second (its last 5 minutes) and the shards that rate needs; "
        "--apply raises `shards` where it is below",
    )
    autoshard.add_argument("--apply", action="store_true", help="set `shards` on the keys that need more")
    autoshard.set_defaults(run=_autoshard)

    for command in (create, show, revoke, rotate, set_limits, update, autoshard, sub.choices["list"]):
        command.add_argument("--json", action="store_true", help="machine-readable output")


def _change_options(parser: argparse.ArgumentParser, *, sanitize: bool) -> None:
    parser.add_argument("key_id", type=options.key_id)
    parser.add_argument(
        "--expires-at", type=options.expiry, default=argparse.SUPPRESS, help=options.EXPIRY_HELP + "; 'never' clears it"
    )
    options.limit_options(parser)
    if sanitize:
        options.sanitize_options(parser)


def _given_limits(args: argparse.Namespace) -> dict[str, Decimal | None]:
    return {name: getattr(args, name) for name in LIMIT_NAMES if hasattr(args, name)}


def _given_sanitize(args: argparse.Namespace) -> dict[str, Any]:
    """The sanitizer fields given on the command line, as `KeyPolicy` fields (None: back to the deployment's)."""
    fields = {dest: dest.removeprefix("sanitize_") for dest, _ in options.SANITIZE_OPTIONS.values()}
    return {field: getattr(args, dest) for dest, field in fields.items() if hasattr(args, dest)}


def _sanitize_with(current: KeyPolicy | None, given: dict[str, Any]) -> KeyPolicy | None:
    """The key's own policy with the given fields changed; None once nothing of its own is left."""
    policy = replace(current or KeyPolicy(), **given)
    return None if policy.empty else policy


def _create(args: argparse.Namespace, settings: Settings, stores: Stores) -> int:
    limits = {name: value for name, value in _given_limits(args).items() if value is not None}
    key = ApiKey(
        key_id=generate_key_id(),
        name=args.name,
        created_at=now_iso(),
        allowed_models=args.models,
        limits=limits,
        expires_at=args.expires_at,
        sanitize=_sanitize_with(None, _given_sanitize(args)),
    )
    secret = generate_key()
    stores.keys.put(key, hash_key(secret))
    if args.json:
        print_json({**key_view(key, settings), "key": secret})
        return 0
    print(f"created key {key.key_id} ({printable(key.name)})")
    print(f"  key      {secret}")
    print("  This is the only time the key is shown: store it now.")
    print(f"  limits   {limits_text(key, settings)}")
    print(f"  models   {models_text(key)}")
    print(f"  expires  {key.expires_at or 'never'}")
    print(f"  sanitize {sanitize_view.effective_text(effective_policy(key, settings))}")
    return 0


def _list(args: argparse.Namespace, settings: Settings, stores: Stores) -> int:
    keys = sorted((key for key, _ in stores.keys.list_all()), key=lambda k: (k.created_at, k.key_id))
    if args.json:
        print_json([key_view(key, settings) for key in keys])
        return 0
    rows = [
        [
            k.key_id,
            printable(k.name),
            _status(k),
            k.created_at,
            k.expires_at or "-",
            models_text(k),
            sanitize_view.short_text(effective_policy(k, settings)),
            limits_text(k, settings),
        ]
        for k in keys
    ]
    print_table(["KEY ID", "NAME", "STATUS", "CREATED", "EXPIRES", "MODELS", "SANITIZE", "LIMITS"], rows)
    return 0


def _show(args: argparse.Namespace, settings: Settings, stores: Stores) -> int:
    key, _ = existing(stores.keys, args.key_id)
    if args.json:
        print_json(key_view(key, settings))
    else:
        _print_key(key, settings)
    return 0


def _print_key(key: ApiKey, settings: Settings) -> None:
    """A key's details; its own settings beside those in force (`*` in limits: the configured default)."""
    print(f"key {key.key_id} ({printable(key.name)})")
    print(f"  status    {_status(key)}{f' at {key.revoked_at}' if key.revoked_at else ''}")
    print(f"  created   {key.created_at}")
    print(f"  expires   {key.expires_at or 'never'}")
    print(f"  models    {models_text(key)}")
    print(f"  limits    own: {_own_limits_text(key)}")
    print(f"            in force: {limits_text(key, settings)}")
    print(f"  sanitize  own: {sanitize_view.own_text(key.sanitize)}")
    print(f"            in force: {sanitize_view.effective_text(effective_policy(key, settings))}")


def _revoke(args: argparse.Namespace, settings: Settings, stores: Stores) -> int:
    key, key_hash = existing(stores.keys, args.key_id)
    if key.active:
        key = replace(key, status="revoked", revoked_at=now_iso())
        stores.keys.replace(key, key_hash)
    if args.json:
        print_json({**key_view(key, settings), "effective_within_s": Decimal(str(settings.auth_cache_ttl_s))})
    else:
        print(
            f"revoked key {key.key_id} ({printable(key.name)}) at {key.revoked_at}; running relays refuse it within "
            f"{settings.auth_cache_ttl_s:g} s (RELAY_AUTH_CACHE_TTL_S)"
        )
    return 0


def _rotate(args: argparse.Namespace, settings: Settings, stores: Stores) -> int:
    key, old_hash = existing(stores.keys, args.key_id)
    if not key.active:
        raise CliError(f"key {key.key_id} is revoked: create a new key instead")
    grace_end = time.strftime(ISO, time.gmtime(time.time() + args.grace * 60))
    secret = generate_key()
    stores.keys.rotate(key, old_hash, hash_key(secret), grace_end)
    if args.json:
        print_json({**key_view(key, settings), "key": secret, "previous_key_valid_until": grace_end})
    else:
        print(f"rotated key {key.key_id} ({printable(key.name)})")
        print(f"  key      {secret}")
        print("  This is the only time the key is shown: store it now.")
        print(f"  the previous key works until {grace_end}")
    return 0


def _autoshard(args: argparse.Namespace, settings: Settings, stores: Stores) -> int:
    """Each active key with a rate limit (its counters are what is measured): its busiest of the last five minutes,
    the shards that rate needs (`shards_for`), and with --apply the key raised to them (never lowered: a lower
    count would leave its share of the limits to shards no longer used until they drain)."""
    from ..limits.rules import default_limits, shards_for

    now = time.time()
    rows: list[dict[str, Any]] = []
    for key, key_hash in sorted(stores.keys.list_all(), key=lambda pair: pair[0].key_id):
        limits = Limits.resolve(key.limits, default_limits(settings))
        if not key.active or not limits.rated:
            continue
        per_minute = stores.limits.recent_requests(key.key_id, limits.shard_count, now)
        peak = max(per_minute.values(), default=0) / 60
        needed = shards_for(peak)
        raised = needed > limits.shard_count
        if raised and args.apply:
            stores.keys.replace(replace(key, limits={**key.limits, "shards": Decimal(needed)}), key_hash)
        rows.append(
            {
                "key_id": key.key_id,
                "name": key.name,
                "peak_requests_per_s": round(peak, 1),
                "shards": limits.shard_count,
                "needed": needed,
                "action": ("raised" if args.apply else "raise") if raised else "none",
            }
        )
    if args.json:
        print_json(rows)
        return 0
    header = ["KEY ID", "NAME", "PEAK REQ/S (5 MIN)", "SHARDS", "NEEDED", "ACTION"]
    print_table(
        header,
        [[str(r[c]) for c in ("key_id", "name", "peak_requests_per_s", "shards", "needed", "action")] for r in rows],
    )
    if any(r["action"] == "raise" for r in rows):
        print(f"run again with --apply to raise them (relays apply it within {settings.auth_cache_ttl_s:g} s)")
    return 0


def _set_limits(args: argparse.Namespace, settings: Settings, stores: Stores) -> int:
    key = _change(args, stores, "nothing to set")
    if args.json:
        print_json(key_view(key, settings))
    else:
        print(
            f"key {key.key_id} limits: {limits_text(key, settings)}; expires {key.expires_at or 'never'} "
            f"(relays apply it within {settings.auth_cache_ttl_s:g} s)"
        )
    return 0


def _update(args: argparse.Namespace, settings: Settings, stores: Stores) -> int:
    key = _change(args, stores, "nothing to update")
    if args.json:
        print_json(key_view(key, settings))
    else:
        print(f"updated key {key.key_id}; relays apply it within {settings.auth_cache_ttl_s:g} s")
        _print_key(key, settings)
    return 0


def _change(args: argparse.Namespace, stores: Stores, nothing: str) -> ApiKey:
    """The key with the given limits, expiry and sanitizer fields changed (`default`: its own value cleared),
    written back; a CliError naming the options when none was given."""
    limits, sanitize = _given_limits(args), _given_sanitize(args)
    if not limits and not sanitize and not hasattr(args, "expires_at"):
        raise CliError(f"{nothing}: give at least one of {', '.join(_change_flags(args))}")
    key, key_hash = existing(stores.keys, args.key_id)
    own = dict(key.limits)
    for name, value in limits.items():
        if value is None:
            own.pop(name, None)
        else:
            own[name] = value
    key = replace(
        key,
        limits=own,
        expires_at=getattr(args, "expires_at", key.expires_at),
        sanitize=_sanitize_with(key.sanitize, sanitize),
    )
    stores.keys.replace(key, key_hash)
    if hasattr(args, "expires_at") and key.active and key.expired(time.time()):
        _warn(
            f"key {key.key_id} expires at {key.expires_at}, already past: relays refuse it (`--expires-at never` or a "
            "later date gives it back)"
        )
    return key


def _warn(message: str) -> None:
    """A change that was made but may not be what was meant: said on stderr, so --json output stays parseable.
    Setting an expiry in the past is allowed (it ends a key at once without revoking it), but never silently."""
    print(f"llm-relay: warning: {message}", file=sys.stderr)


def _change_flags(args: argparse.Namespace) -> list[str]:
    """The options of this command that change something: every limit, --expires-at, and the sanitizer's where
    the command takes them."""
    flags = ["--" + n.replace("_", "-") for n in LIMIT_NAMES] + ["--expires-at"]
    return flags + (list(options.SANITIZE_OPTIONS) if args.keys_command == "update" else [])


def existing(keys: KeyStore, key_id: str) -> tuple[ApiKey, str]:
    found = keys.get_by_id(key_id)
    if found is None:
        raise CliError(f"no key with id {key_id!r} (see `llm-relay keys list`)")
    return found


def _status(key: ApiKey) -> str:
    return "expired" if key.active and key.expired(time.time()) else key.status


def key_view(key: ApiKey, settings: Settings) -> dict[str, Any]:
    """A key as JSON: its own limits (`unlimited` where it lifts a default) and sanitizer policy (None fields: the
    deployment's), and the limits and policy in force."""
    return {
        "key_id": key.key_id,
        "name": key.name,
        "status": _status(key),
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
        "expires_at": key.expires_at,
        "allowed_models": sorted(key.allowed_models) if key.allowed_models is not None else None,
        "limits": {name: "unlimited" if value < 0 else value for name, value in key.limits.items()},
        "effective_limits": jsonable(_effective(key, settings)),
        "sanitize": sanitize_view.own_json(key.sanitize),
        "effective_sanitize": sanitize_view.effective_json(effective_policy(key, settings)),
    }


def effective_policy(key: ApiKey, settings: Settings) -> Policy:
    """The sanitizer policy in force for the key: its own, floored by the deployment's."""
    return settings.sanitize_policy.for_key(key.sanitize)


def _effective(key: ApiKey, settings: Settings) -> dict[str, Any]:
    from ..limits.rules import default_limits

    limits = Limits.resolve(key.limits, default_limits(settings))
    effective = {name: "unlimited" if getattr(limits, name) is None else getattr(limits, name) for name in LIMIT_NAMES}
    effective["shards"] = limits.shard_count
    return effective


def limits_text(key: ApiKey, settings: Settings) -> str:
    """`rpm=5 daily_budget_usd=2*` (`*`: the configured default, not the key's own value)."""
    parts = [
        f"{name}={value if isinstance(value, str | int) else plain(value)}{'' if name in key.limits else '*'}"
        for name, value in _effective(key, settings).items()
        if (value != "unlimited" and (name != "shards" or value != 1)) or name in key.limits
    ]
    return " ".join(parts) if parts else "unlimited"


def _own_limits_text(key: ApiKey) -> str:
    own = [f"{n}={'unlimited' if key.limits[n] < 0 else plain(key.limits[n])}" for n in LIMIT_NAMES if n in key.limits]
    return " ".join(own) if own else "none (the configured defaults)"


def models_text(key: ApiKey) -> str:
    return ",".join(printable(m) for m in sorted(key.allowed_models)) if key.allowed_models else "all"
