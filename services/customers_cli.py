"""`rapport customers ...`: an operator's corrections of identity (issue 14)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from services.settings import Settings

EXIT_REFUSED = 2


def add_parser(sub: Any, epilog: str) -> None:
    p = sub.add_parser(
        "customers", help="identity corrections: unmerge a wrong merge, allow a link again",
        description="Customers are sets of identifiers (account id, emails, phones) linked by their events. "
        "These commands correct a link an operator knows to be wrong, as events on the customers' streams; "
        "every read model follows.", epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("unmerge", "split an identifier (and what came only through it, events included) off a customer, for good: "
                    "later events that link them again are refused (and the refusal shown) until `allow`"),
        ("allow", "lift an unmerge: the links events made between the identifier and the customer count again"),
    ):
        a = actions.add_parser(name, help=text.split(":")[0], description=text[0].upper() + text[1:] + ".")
        a.add_argument("customer", metavar="ID", help="the customer's id (GET /customers/{id} gives it)")
        a.add_argument("--identifier", required=True, metavar="KIND:VALUE",
                       help="the identifier, e.g. email:ana@example.com, phone:+94771234567 or id:crm-42")
        if name == "unmerge":
            a.add_argument("--reason", default="", help="why, kept with the separation (e.g. a ticket number)")
        a.add_argument("--json", action="store_true", help="print what moved as JSON")
        a.set_defaults(func=cmd_correct)


def cmd_correct(args: argparse.Namespace, settings: Settings) -> int:
    from services import identities
    from services.bootstrap import interaction_log

    store = interaction_log(settings)
    try:
        if args.action == "unmerge":
            done = identities.unmerge(store, args.customer, args.identifier, settings.default_phone_region, args.reason)
        else:
            done = identities.allow(store, args.customer, args.identifier, settings.default_phone_region)
    except identities.IdentityRequestError as error:
        print(f"rapport customers {args.action}: {error}")
        return EXIT_REFUSED
    finally:
        store.close()
    if args.json:
        print(json.dumps(done.as_json(), indent=2))
        return 0
    print(f"{args.action}: {done.separation.a} / {done.separation.b}")
    for identifiers, source, target in done.moves:
        print(f"  {', '.join(identifiers)}: {source} -> {target}")
    for merged, survivor in done.merged.items():
        print(f"  {merged} now redirects to {survivor}")
    if not done.moves:
        print("  nothing moved: no event links them now")
    return 0
