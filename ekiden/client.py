"""The CLI's side of the control API: finding the site, connecting, and calling verbs."""

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from runtime.bus import BusSettings, connect
from schemas import subjects
from schemas.codec import decode, encode_one
from schemas.errors import ErrorCode, WireError
from schemas.messages import Envelope, Kind

#: File in the site directory that says where a running embedded stack listens.
ENDPOINT_FILE = "endpoint.json"
#: Site directory used when none is named.
DEFAULT_SITE = "ekiden-site"


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
    """Record where a site's stack listens, for other CLI commands to find."""
    path = site / ENDPOINT_FILE
    doc = {"nats": endpoint.nats_url, "server_id": endpoint.server_id, "pid": pid}
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return path


def find_endpoint(nats: str | None, server_id: str | None, site: str | None) -> Endpoint:
    """Resolve the endpoint from flags, ``EKIDEN_NATS`` / ``EKIDEN_SERVER_ID``, or the site's endpoint file.

    Raises:
        CliError: nothing says where the manager is.
    """
    url = nats or os.environ.get("EKIDEN_NATS")
    sid = server_id or os.environ.get("EKIDEN_SERVER_ID")
    creds = os.environ.get("EKIDEN_NATS_CREDS")
    if url:
        return Endpoint(url, sid or "main", creds)
    path = site_dir(site) / ENDPOINT_FILE
    try:
        doc = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise CliError(
            f"no running site found: {path} does not exist (start one with 'ekiden up', or pass --nats URL)"
        ) from None
    except orjson.JSONDecodeError as exc:
        raise CliError(f"{path} is not valid JSON: {exc}") from exc
    return Endpoint(str(doc["nats"]), sid or str(doc.get("server_id", "main")), creds)


class ApiClient:
    """Calls control API verbs on the active manager of one server ID."""

    def __init__(self, nc: Client, server_id: str, timeout_s: float = 30.0) -> None:
        self.nc = nc
        self.server_id = server_id
        self._timeout_s = timeout_s

    @classmethod
    async def connect(cls, endpoint: Endpoint, timeout_s: float = 30.0) -> "ApiClient":
        """Connect to the endpoint's NATS (giving up after a few seconds).

        Raises:
            CliError: NATS cannot be reached.
        """
        try:
            nc = await connect(
                BusSettings(endpoint.nats_url, endpoint.creds_file, name="ekiden-cli", connect_deadline_s=5)
            )
        except Exception as exc:
            raise CliError(f"cannot reach NATS at {endpoint.nats_url}: {exc}") from exc
        return cls(nc, endpoint.server_id, timeout_s)

    async def close(self) -> None:
        """Close the connection."""
        await self.nc.close()

    async def call(self, verb: str, **args: Any) -> Any:
        """Call a verb and return its result.

        Raises:
            WireError: the manager refused the request, or no manager answered.
        """
        body = encode_one(Envelope(Kind.API, self.server_id, args, ts=time.time()))
        try:
            msg = await self.nc.request(subjects.api(self.server_id, verb), body, timeout=self._timeout_s)
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
