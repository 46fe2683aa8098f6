"""``ekiden security``: make and rotate a site's NATS configuration and credentials (see ekiden.natsauth)."""

import argparse
import asyncio
from collections.abc import Iterable
from pathlib import Path

from ekiden.client import CliError, site_dir
from ekiden.natsauth import ADMIN, Identity, Role, Tls, config_path, existing, init, security_dir
from engine.settings import DEFAULT_SERVER_ID
from schemas.definitions import DEFAULT_RELAY, DEFAULT_TENANT
from schemas.names import is_valid_name


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``ekiden security`` and its subcommands."""
    sec = sub.add_parser("security", help="NATS credentials and permissions of a site: init, rotate, ls")
    cmds = sec.add_subparsers(dest="security_command", required=True, metavar="SUBCOMMAND")

    s = cmds.add_parser(
        "init",
        help="write the nats-server config and a credentials file per role (keeps existing keys; adds what is named)",
    )
    _site_arg(s)
    s.add_argument("--server-id", action="append", default=[], metavar="SID", help="a manager (default: main)")
    s.add_argument("--relay", action="append", default=[], metavar="NAME", help="a relay (default: main)")
    s.add_argument("--dest", action="append", default=[], metavar="NAME", help="the workers of a destination")
    s.add_argument("--agent", action="append", default=[], metavar="NAME", help="a standard agent")
    s.add_argument(
        "--tenant", action="append", default=[], metavar="NAME", help="operators of a tenant (full and read-only)"
    )
    s.add_argument("--tls-cert", type=Path, metavar="FILE", help="server certificate (PEM) for non-loopback use")
    s.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (PEM)")
    s.add_argument("--tls-ca", type=Path, metavar="FILE", help="CA that clients verify it with (default: the cert)")

    s = cmds.add_parser("rotate", help="new keys for the credentials named (ROLE/NAME, e.g. worker/cloud), or for all")
    _site_arg(s)
    s.add_argument("who", nargs="*", metavar="ROLE/NAME")

    s = cmds.add_parser("ls", help="list the site's credentials")
    _site_arg(s)


def _site_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site", help="site directory (default: $EKIDEN_SITE or ./ekiden-site)")


async def cmd_security(args: argparse.Namespace) -> int:
    """``ekiden security SUBCOMMAND``."""
    site = site_dir(args.site).resolve()
    if args.security_command == "init":
        wanted = _wanted(args)
        made = await asyncio.to_thread(init, site, wanted, (), _tls(args))
    elif args.security_command == "rotate":
        found = await asyncio.to_thread(existing, site)
        if not found:
            raise CliError(f"{security_dir(site)} has no credentials: run 'ekiden security init' first")
        renew = [_parse_who(w) for w in args.who] if args.who else found
        missing = [str(w) for w in renew if w not in found]
        if missing:
            raise CliError(f"no such credential: {', '.join(missing)}")
        made = await asyncio.to_thread(init, site, (), renew, None)
        print(f"rotated {len(renew)} credential(s); reload nats-server (nats-server --signal reload) to apply")
    else:
        made = await asyncio.to_thread(existing, site)
    base = security_dir(site)
    for who in made:
        print(f"{who.role!s:<12} {who.name:<24} {who.path(base)}")
    print(f"server config: {config_path(site)}")
    return 0


def plan_identities(
    server_id: str, relays: Iterable[str], dests: Iterable[str], agents: Iterable[str]
) -> list[Identity]:
    """The identities an embedded stack needs (``ekiden up``), with the default tenant's operators."""
    out = [Identity(Role.MANAGER, server_id), ADMIN]
    out += [Identity(Role.RELAY, r) for r in relays]
    out += [Identity(Role.WORKER, d) for d in dests]
    out += [Identity(Role.AGENT, a) for a in agents]
    out += [Identity(Role.OPERATOR, DEFAULT_TENANT), Identity(Role.OPERATOR_RO, DEFAULT_TENANT)]
    return out


def _wanted(args: argparse.Namespace) -> list[Identity]:
    names = [*args.server_id, *args.relay, *args.dest, *args.agent, *args.tenant]
    bad = [n for n in names if not is_valid_name(n)]
    if bad:
        raise CliError(f"invalid names: {', '.join(map(repr, bad))} (letters, digits, '_' and '-', at most 64)")
    out = [Identity(Role.MANAGER, s) for s in args.server_id or [DEFAULT_SERVER_ID]]
    out += [Identity(Role.RELAY, r) for r in args.relay or [DEFAULT_RELAY]]
    out += [Identity(Role.WORKER, d) for d in args.dest]
    out += [Identity(Role.AGENT, a) for a in args.agent]
    for tenant in args.tenant or [DEFAULT_TENANT]:
        out += [Identity(Role.OPERATOR, tenant), Identity(Role.OPERATOR_RO, tenant)]
    return out


def _tls(args: argparse.Namespace) -> Tls | None:
    if args.tls_cert is None and args.tls_key is None:
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise CliError("--tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key, args.tls_ca):
        if path is not None and not path.is_file():
            raise CliError(f"{path}: no such file")
    return Tls(args.tls_cert, args.tls_key, args.tls_ca or args.tls_cert)


def _parse_who(text: str) -> Identity:
    role, _, name = text.partition("/")
    if role not in Role._value2member_map_ or not is_valid_name(name):
        roles = ", ".join(r.value for r in Role)
        raise CliError(f"{text!r} is not ROLE/NAME (roles: {roles})")
    return Identity(Role(role), name)
