"""`rapport customers ...`: an operator's corrections of identity (issue 14)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from services.settings import Settings

EXIT_REFUSED = 2


def add_parser(sub: Any, epilog: str) -> None:
    p = sub.add_parser(
        "customers", help="identity corrections (unmerge, allow) and erasure (forget)",
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
    f = actions.add_parser(
        "forget", help="forget a customer (GDPR art. 17): its personal data, everywhere, for good",
        description="Destroy the keys the customer's personal fields (name, email, phone, free text, unknown fields) "
        "were sealed with, record the erasure on its streams and remove them from every read model, the point-in-time "
        "caches and the dead letters that name it. Counts, revenue, scores, lifecycle and the hash chains stay "
        "(`rapport audit verify` still holds). Cannot be undone. Kafka's own copy of the messages is its topics' "
        "retention's to remove (README, Privacy).")
    f.add_argument("customer", metavar="ID", help="the customer's id (GET /customers/{id} gives it)")
    f.add_argument("--reason", default="", help="why, kept with the erasure (e.g. the request's ticket number)")
    f.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                   help="wait this long for the projector to pass the erasure (default 30)")
    f.add_argument("--json", action="store_true", help="print what was done as JSON")
    f.set_defaults(func=cmd_forget)


def cmd_forget(args: argparse.Namespace, settings: Settings) -> int:
    from services import privacy

    done = _with_store(settings, "forget", privacy.ForgetRequestError,
                       lambda store: privacy.forget(store, settings, args.customer, args.reason, wait_seconds=args.wait))
    if done is None or args.json:
        return EXIT_REFUSED if done is None else _print_json(done)
    print(f"forgot {done.customer_id}: {done.keys_destroyed} key(s) destroyed over {len(done.streams)} stream(s); "
          f"{done.dead_letters_erased} dead letter(s) erased; read models "
          + ("caught up" if done.read_models_done else "redacted now, and again when the projector reaches the erasure"))
    return 0


def cmd_correct(args: argparse.Namespace, settings: Settings) -> int:
    from services import identities

    region, key = settings.default_phone_region, settings.matching_key()

    def correct(store: Any) -> Any:
        if args.action == "unmerge":
            return identities.unmerge(store, args.customer, args.identifier, region, args.reason, key=key)
        return identities.allow(store, args.customer, args.identifier, region, key=key)

    done = _with_store(settings, args.action, identities.IdentityRequestError, correct)
    if done is None or args.json:
        return EXIT_REFUSED if done is None else _print_json(done)
    print(f"{args.action}: {done.separation.a} / {done.separation.b}")
    for identifiers, source, target in done.moves:
        print(f"  {', '.join(identifiers)}: {source} -> {target}")
    for merged, survivor in done.merged.items():
        print(f"  {merged} now redirects to {survivor}")
    if not done.moves:
        print("  nothing moved: no event links them now")
    return 0


def _with_store(settings: Settings, action: str, refused: type[Exception], call: Callable[[Any], Any]) -> Any:
    """`call(store)` on the event store, or None (the reason printed) when the request is refused."""
    from services.bootstrap import interaction_log

    store = interaction_log(settings)
    try:
        return call(store)
    except refused as error:
        print(f"rapport customers {action}: {error}")
        return None
    finally:
        store.close()


def _print_json(done: Any) -> int:
    print(json.dumps(done.as_json(), indent=2))
    return 0
