"""The CLI's side of the control API: finding the site, connecting, and calling verbs."""

import argparse
import asyncio
import getpass
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from ekiden.natsauth import ADMIN, security_dir
from runtime.bus import BusSettings, connect
from runtime.credentials import read_credentials
from runtime.errors import BusError
from schemas import subjects
from schemas.codec import decode, encode_one
from schemas.errors import ErrorCode, WireError
from schemas.messages import Envelope, Kind

#: File in the site directory that says where a running embedded stack listens.
ENDPOINT_FILE = "endpoint.json"
#: Who is calling, for the manager's audit log of operator actions.
CALLER = {"user": getpass.getuser(), "host": socket.gethostname(), "pid": os.getpid()}
#: Site directory used when none is named.
DEFAULT_SITE = "ekiden-site"


def add_connection_args(p: argparse.ArgumentParser) -> None:
    """The options every command that talks to a running site takes."""
    p.add_argument("--site", help="site directory (default: $EKIDEN_SITE or ./ekiden-site)")
    p.add_argument("--nats", help="NATS URL of the site (default: $EKIDEN_NATS or the site's endpoint.json)")
    p.add_argument("--server-id", help="manager server ID (default: $EKIDEN_SERVER_ID or the site's)")
    p.add_argument(
        "--creds", metavar="FILE", help="NATS credentials (default: $EKIDEN_NATS_CREDS or the site's admin credential)"
    )


class CliError(Exception):
    """An error the CLI prints as one line before exiting non-zero."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the manager of a site can be reached."""

    nats_url: str
    server_id: str
    creds_file: str | None = None


def site_dir(arg: str | None) -> Path:
    """The site directory: the argument, else ``EKIDEN_SITE``, else ``./ekiden-site``."""
    return Path(arg or os.environ.get("EKIDEN_SITE") or DEFAULT_SITE)


def write_endpoint(site: Path, endpoint: Endpoint, pid: int) -> Path:
    """Record where a site's stack listens, and with which credential to call it, for other CLI commands."""
    path = site / ENDPOINT_FILE
    doc: dict[str, Any] = {"nats": endpoint.nats_url, "server_id": endpoint.server_id, "pid": pid}
    if endpoint.creds_file is not None:
        doc["creds"] = endpoint.creds_file
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return path


def find_endpoint(nats: str | None, server_id: str | None, site: str | None, creds: str | None = None) -> Endpoint:
    """Resolve the endpoint from flags, ``EKIDEN_NATS`` / ``EKIDEN_SERVER_ID`` / ``EKIDEN_NATS_CREDS``, or the
    site's endpoint file (which names the admin credential of a secured ``ekiden up``).

    Raises:
        CliError: nothing says where the manager is.
    """
    url = nats or os.environ.get("EKIDEN_NATS")
    sid = server_id or os.environ.get("EKIDEN_SERVER_ID")
    creds = creds or os.environ.get("EKIDEN_NATS_CREDS")
    if url:
        return Endpoint(url, sid or "main", creds or _site_admin_creds(site))
    path = site_dir(site) / ENDPOINT_FILE
    try:
        doc = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise CliError(
            f"no running site found: {path} does not exist (start one with 'ekiden up', or pass --nats URL)"
        ) from None
    except orjson.JSONDecodeError as exc:
        raise CliError(f"{path} is not valid JSON: {exc}") from exc
    saved = doc.get("creds")
    return Endpoint(str(doc["nats"]), sid or str(doc.get("server_id", "main")), creds or saved)


def endpoint_of(args: argparse.Namespace) -> Endpoint:
    """The endpoint a command's connection options (``add_connection_args``) name."""
    return find_endpoint(args.nats, args.server_id, args.site, getattr(args, "creds", None))


def _site_admin_creds(site: str | None) -> str | None:
    """The site's admin credential, if ``ekiden security init`` made one there."""
    path = ADMIN.path(security_dir(site_dir(site)))
    return str(path) if path.is_file() else None


class ApiClient:
    """Calls control API verbs on the active manager of one server ID."""

    def __init__(self, nc: Client, server_id: str, timeout_s: float = 30.0, tenant: str | None = None) -> None:
        self.nc = nc
        self.server_id = server_id
        #: the tenant this client asks as (its operator credential's); None: the admin, who sees all
        self.tenant = tenant
        self._timeout_s = timeout_s

    @classmethod
    async def connect(cls, endpoint: Endpoint, timeout_s: float = 30.0) -> "ApiClient":
        """Connect to the endpoint's NATS (giving up after a few seconds).

        Raises:
            CliError: NATS cannot be reached.
        """
        try:
            tenant = read_credentials(endpoint.creds_file).tenant if endpoint.creds_file else None
            nc = await connect(
                BusSettings(endpoint.nats_url, endpoint.creds_file, name="ekiden-cli", connect_deadline_s=5)
            )
        except BusError as exc:  # it names the URL and why
            raise CliError(str(exc)) from exc
        except Exception as exc:
            raise CliError(f"cannot reach NATS at {endpoint.nats_url}: {exc}") from exc
        return cls(nc, endpoint.server_id, timeout_s, tenant)

    async def close(self) -> None:
        """Close the connection."""
        await self.nc.close()

    async def call(self, verb: str, **args: Any) -> Any:
        """Call a verb and return its result.

        A refusal for the caller's rate limit is retried after the wait it names, while the timeout lasts.

        Raises:
            WireError: the manager refused the request, or no manager answered.
        """
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                return await self._call_once(verb, args)
            except WireError as exc:
                wait_s = exc.retry_after_s
                if wait_s is None or time.monotonic() + wait_s > deadline:
                    raise
                await asyncio.sleep(wait_s)

    async def _call_once(self, verb: str, args: dict[str, Any]) -> Any:
        body = encode_one(Envelope(Kind.API, self.server_id, {**args, "_caller": CALLER}, ts=time.time()))
        subject = subjects.api(self.server_id, verb, self.tenant or subjects.ALL_TENANTS)
        try:
            msg = await self.nc.request(subject, body, timeout=self._timeout_s)
        except NoRespondersError:
            raise WireError(
                ErrorCode.UNAVAILABLE, f"no active manager for server id {self.server_id!r} is listening", True
            ) from None
        except (NatsTimeoutError, TimeoutError):
            raise WireError(
                ErrorCode.UNAVAILABLE, f"the manager did not answer within {self._timeout_s:g}s", True
            ) from None
        reply = decode(msg.data)[0]
        if reply.kind == Kind.ERROR:
            raise WireError.from_wire(reply.payload)
        return reply.payload.get("result")


async def call_once(args: argparse.Namespace, verb: str, **params: Any) -> Any:
    """Connect to the site the command line names, ask one API verb, close; return its result."""
    client = await ApiClient.connect(endpoint_of(args))
    try:
        return await client.call(verb, **params)
    finally:
        await client.close()
