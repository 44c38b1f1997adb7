"""`llm-relay keys create|list|revoke|rotate|set-limits`: API keys. The plain key is printed once, at creation
or rotation; the table holds its hash."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..keys import ISO, ApiKey, generate_key, generate_key_id, hash_key, now_iso
from ..limits import LIMIT_NAMES, Limits
from . import options
from .common import CliError
from .output import jsonable, plain, print_json, print_table, printable

if TYPE_CHECKING:
    from ..dynamo import KeyStore, Stores
    from ..settings import Settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="create, list, revoke and rotate keys, set their limits")
    sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    create = sub.add_parser("create", help="create a key; prints the plain key once")
    create.add_argument("--name", required=True, type=options.name, help="who or what the key is for")
    create.add_argument("--models", type=options.models, default=None, help="comma-separated allow-list (default: all)")
    create.add_argument("--expires-at", type=options.expiry, default=None, help=options.EXPIRY_HELP)
    options.limit_options(create)
    create.set_defaults(run=_create)

    sub.add_parser("list", help="list keys (never the plain keys)").set_defaults(run=_list)

    revoke = sub.add_parser("revoke", help="revoke a key (effective within the auth cache TTL)")
    revoke.add_argument("key_id", type=options.key_id)
    revoke.set_defaults(run=_revoke)

    rotate = sub.add_parser("rotate", help="a new secret for a key; the old one works for --grace minutes more")
    rotate.add_argument("key_id", type=options.key_id)
    rotate.add_argument("--grace", type=options.minutes, default=60.0, help="minutes the old secret keeps working (60)")
    rotate.set_defaults(run=_rotate)

    set_limits = sub.add_parser("set-limits", help="set or clear a key's own limits and expiry")
    set_limits.add_argument("key_id", type=options.key_id)
    set_limits.add_argument(
        "--expires-at", type=options.expiry, default=argparse.SUPPRESS, help=options.EXPIRY_HELP + "; 'never' clears it"
    )
    options.limit_options(set_limits)
    set_limits.set_defaults(run=_set_limits)

    for command in (create, revoke, rotate, set_limits, sub.choices["list"]):
        command.add_argument("--json", action="store_true", help="machine-readable output")


def _given_limits(args: argparse.Namespace) -> dict[str, Decimal | None]:
    return {name: getattr(args, name) for name in LIMIT_NAMES if hasattr(args, name)}


def _create(args: argparse.Namespace, settings: Settings, stores: Stores) -> int:
    limits = {name: value for name, value in _given_limits(args).items() if value is not None}
    key = ApiKey(
        key_id=generate_key_id(),
        name=args.name,
        created_at=now_iso(),
        allowed_models=args.models,
        limits=limits,
        expires_at=args.expires_at,
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
            limits_text(k, settings),
        ]
        for k in keys
    ]
    print_table(["KEY ID", "NAME", "STATUS", "CREATED", "EXPIRES", "MODELS", "LIMITS"], rows)
    return 0


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


def _set_limits(args: argparse.Namespace, settings: Settings, stores: Stores) -> int:
    given = _given_limits(args)
    if not given and not hasattr(args, "expires_at"):
        flags = ", ".join("--" + n.replace("_", "-") for n in LIMIT_NAMES)
        raise CliError(f"nothing to set: give at least one of {flags}, --expires-at")
    key, key_hash = existing(stores.keys, args.key_id)
    limits = dict(key.limits)
    for name, value in given.items():
        if value is None:
            limits.pop(name, None)
        else:
            limits[name] = value
    key = replace(key, limits=limits, expires_at=getattr(args, "expires_at", key.expires_at))
    stores.keys.replace(key, key_hash)
    if args.json:
        print_json(key_view(key, settings))
    else:
        print(
            f"key {key.key_id} limits: {limits_text(key, settings)}; expires {key.expires_at or 'never'} "
            f"(relays apply it within {settings.auth_cache_ttl_s:g} s)"
        )
    return 0


def existing(keys: KeyStore, key_id: str) -> tuple[ApiKey, str]:
    found = keys.get_by_id(key_id)
    if found is None:
        raise CliError(f"no key with id {key_id!r} (see `llm-relay keys list`)")
    return found


def _status(key: ApiKey) -> str:
    return "expired" if key.active and key.expired(time.time()) else key.status


def key_view(key: ApiKey, settings: Settings) -> dict[str, Any]:
    """A key as JSON: its own limits (`unlimited` where it lifts a default) and the limits in force."""
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
    }


def _effective(key: ApiKey, settings: Settings) -> dict[str, Any]:
    from ..limiter import default_limits

    limits = Limits.resolve(key.limits, default_limits(settings))
    return {name: "unlimited" if getattr(limits, name) is None else getattr(limits, name) for name in LIMIT_NAMES}


def limits_text(key: ApiKey, settings: Settings) -> str:
    """`rpm=5 daily_budget_usd=2*` (`*`: the configured default, not the key's own value)."""
    parts = [
        f"{name}={value if isinstance(value, str | int) else plain(value)}{'' if name in key.limits else '*'}"
        for name, value in _effective(key, settings).items()
        if value != "unlimited" or name in key.limits
    ]
    return " ".join(parts) if parts else "unlimited"


def models_text(key: ApiKey) -> str:
    return ",".join(printable(m) for m in sorted(key.allowed_models)) if key.allowed_models else "all"
