"""`rapport keys create|list|revoke`: the API's keys and their roles (issue 15)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from services.settings import Settings

EXIT_REFUSED = 2


def add_parser(sub: Any, epilog: str) -> None:
    from services.access import ROLE_HELP

    roles = "\n".join(f"  {role.value:<9} {text}" for role, text in ROLE_HELP.items())
    p = sub.add_parser(
        "keys", help="API keys: create (the key is shown once), list, revoke",
        description="Every route of the HTTP API but /health needs a key, sent as `Authorization: Bearer rk_…` or "
        "`X-API-Key: rk_…`, whose roles include the route's. The database keeps only a hash of each key.\n\n"
        f"roles:\n{roles}", epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a key and print it (once: it cannot be shown again)",
                                description="Make a key and print it. Keep it: only its hash is stored.")
    create.add_argument("--name", required=True, help="who or what uses the key, e.g. pbx-01 or 'ana (analyst)'")
    create.add_argument("--role", required=True, action="append", dest="roles", metavar="ROLE",
                        help="producer, analyst, auditor or admin; repeat for several")
    create.add_argument("--json", action="store_true", help="print the key and its details as JSON")
    create.set_defaults(func=cmd_keys)
    listing = actions.add_parser("list", help="the keys, without their secrets", description="The keys: id, name, "
                                 "roles, when made and revoked. Secrets are not stored, so cannot be shown.")
    listing.add_argument("--active", action="store_true", help="leave out revoked keys")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_keys)
    revoke = actions.add_parser("revoke", help="revoke a key: the API refuses it within seconds",
                                description="Revoke a key, by its id (`rapport keys list`) or its full text. "
                                "API processes stop accepting it within 2 seconds (they cache keys that long).")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key's id, e.g. Ab3dE6gH9jKl, or the whole rk_… text")
    revoke.add_argument("--json", action="store_true", help="print JSON")
    revoke.set_defaults(func=cmd_keys)


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    import psycopg

    from services import access
    from services.bootstrap import check_database, conninfo, ensure_access_tables

    check_database(settings)
    ensure_access_tables(settings)
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        try:
            if args.action == "create":
                key, text = access.create_key(conn, args.name, args.roles)
                if args.json:
                    print(json.dumps({**key.as_json(), "key": text}, indent=2))
                else:
                    print(f"key {key.key_id} ({key.name}; {', '.join(r.value for r in key.roles)}):\n{text}\n"
                          "Keep it now: it is not stored and cannot be shown again.")
            elif args.action == "list":
                keys = access.list_keys(conn, include_revoked=not args.active)
                if args.json:
                    print(json.dumps([k.as_json() for k in keys], indent=2))
                else:
                    print(f"{'KEY_ID':<13} {'ROLES':<24} {'CREATED':<21} {'REVOKED':<21} NAME")
                    for k in keys:
                        print(f"{k.key_id:<13} {','.join(r.value for r in k.roles):<24} {_when(k.created_at):<21} "
                              f"{_when(k.revoked_at):<21} {k.name}")
            else:
                key = access.revoke_key(conn, args.key_id)
                print(json.dumps(key.as_json(), indent=2) if args.json else
                      f"revoked {key.key_id} ({key.name}) at {_when(key.revoked_at)}")
        except access.KeyRequestError as error:
            print(f"rapport keys {args.action}: {error}")
            return EXIT_REFUSED
    return 0


def _when(at: Any) -> str:
    return "-" if at is None else at.strftime("%Y-%m-%dT%H:%M:%SZ")
