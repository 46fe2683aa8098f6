"""Every NATS subject, stream and consumer name Ekiden uses, built in one place."""

from schemas.names import check_name, is_valid_name

#: Root token of every subject.
ROOT = "ekiden"
#: Every standard agent's registration and heartbeats (its inventory), for managers.
ALL_AGENT_HEARTBEATS = f"{ROOT}.agent.*.hb"
#: Queue group shared by the managers of one server ID (only the active one subscribes).
MANAGER_QUEUE = "manager"
#: Queue group shared by relays of one name.
RELAY_QUEUE = "relay"
#: NATS header a relay puts on what it carries from one NATS system to the other, so that it never carries
#: a message back (a relay whose two sides are one NATS system would otherwise loop it forever).
CARRIED_HEADER = "Ekiden-Carried"
#: The durable pull consumer that every worker of a destination shares.
DEST_CONSUMER = "workers"
#: API subject token of a caller who sees every tenant (the admin); never a valid tenant name.
ALL_TENANTS = "_all"


def _tenant_token(tenant: str) -> str:
    return tenant if tenant == ALL_TENANTS else check_name(tenant, "tenant")


def api(sid: str, verb: str, tenant: str = ALL_TENANTS) -> str:
    """Request-reply control API verb of the manager holding server ID ``sid``, asked as ``tenant``.

    The tenant token is what NATS permissions pin an operator's credential to, so the manager can trust
    it: an operator of tenant ``a`` can publish only on ``ekiden.<sid>.api.a.*``. ``ALL_TENANTS`` asks as
    the admin, who sees every tenant.
    """
    return f"{ROOT}.{check_name(sid, 'server id')}.api.{_tenant_token(tenant)}.{check_name(verb, 'API verb')}"


def api_all(sid: str) -> str:
    """Wildcard the active manager subscribes to for every API verb of every tenant."""
    return f"{ROOT}.{check_name(sid, 'server id')}.api.*.*"


def api_caller(subject: str) -> tuple[str, str] | None:
    """``(tenant, verb)`` of an API subject, or None if it is not one (the manager's side of ``api``)."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] != ROOT or parts[2] != "api":
        return None
    tenant, verb = parts[3], parts[4]
    if tenant != ALL_TENANTS and not is_valid_name(tenant):
        return None
    return tenant, verb


def events(sid: str) -> str:
    """Accepted, started, heartbeat and finished events for server ID ``sid``; the reply is the ack."""
    return f"{ROOT}.{check_name(sid, 'server id')}.evt"


def hello(sid: str) -> str:
    """A manager became active for ``sid``: outboxes resend what is not yet acked."""
    return f"{ROOT}.{check_name(sid, 'server id')}.hello"


def hello_all() -> str:
    """Wildcard that agents and relays subscribe to: a manager of any server ID became active."""
    return f"{ROOT}.*.hello"


def run_updates(sid: str, run_id: str, tenant: str | None = None) -> str:
    """Live state changes of one run of ``tenant``, published after they are committed.

    The manager publishes with the run's tenant; a follower that does not know it (the admin) passes None
    and subscribes to the run under any tenant.
    """
    token = "*" if tenant is None else check_name(tenant, "tenant")
    return f"{ROOT}.{check_name(sid, 'server id')}.run.{token}.{check_name(run_id, 'run id')}"


def all_run_updates(sid: str) -> str:
    """Live state changes of every run of ``sid``, of every tenant."""
    return f"{ROOT}.{check_name(sid, 'server id')}.run.*.*"


def agent_run(name: str) -> str:
    """Dispatch subject of one standard agent; the reply acks acceptance."""
    return f"{ROOT}.agent.{check_name(name, 'agent')}.run"


def agent_heartbeat(name: str) -> str:
    """Registration and heartbeats (the inventory) of one standard agent: its credential may publish here only."""
    return f"{ROOT}.agent.{check_name(name, 'agent')}.hb"


def agent_of_heartbeat(subject: str) -> str:
    """The agent name an ``agent_heartbeat`` subject names."""
    return subject.split(".")[2]


def relay_run(name: str) -> str:
    """Flexible jobs for relays of one name (queue group); acked once held durably."""
    return f"{ROOT}.relay.{check_name(name, 'relay')}.run"


def relay_events(name: str) -> str:
    """Events from destination workers to relays of one name (queue group); the reply is the ack."""
    return f"{ROOT}.relay.{check_name(name, 'relay')}.evt"


def relay_stats(name: str) -> str:
    """Request-reply: a relay of this name reports its destinations (pending, running, workers, backlog)."""
    return f"{ROOT}.relay.{check_name(name, 'relay')}.stats"


def dest_heartbeat(name: str) -> str:
    """Destination workers announce themselves here (on the workers' NATS), for relays to count them."""
    return f"{ROOT}.dest.{check_name(name, 'destination')}.hb"


def all_dest_heartbeats() -> str:
    """Wildcard a relay subscribes to (downstream) to count the workers of every destination."""
    return f"{ROOT}.dest.*.hb"


def dest_run(name: str) -> str:
    """Subject of a destination's JetStream work-queue stream."""
    return f"{ROOT}.dest.{check_name(name, 'destination')}.run"


def dest_stream(name: str) -> str:
    """JetStream stream name of a destination."""
    return f"EKIDEN_DEST_{check_name(name, 'destination')}"


def relay_queue(relay: str) -> str:
    """The queue group of the relays named ``relay``: one of them takes each message all relays hear."""
    return f"{RELAY_QUEUE}.{check_name(relay, 'relay')}"


#: The kinds of target an attempt goes to, as its ``target`` names them (``agent:NAME``, ``dest:NAME``).
TARGET_KINDS = {"agent": "agent", "dest": "destination"}


def control_all() -> str:
    """Every attempt's control subject (the managers publish them)."""
    return f"{ROOT}.ctl.>"


def control(target: str, attempt_id: str) -> str:
    """Control requests (kill, replay of the output so far) for whoever runs this attempt.

    Args:
        target: where the attempt went: ``agent:NAME`` or ``dest:NAME``.
    """
    kind, _, name = target.partition(":")
    what = TARGET_KINDS.get(kind)
    if what is None:
        raise ValueError(f"not an attempt target: {target!r}")
    return f"{ROOT}.ctl.{kind}.{check_name(name, what)}.{attempt_id}"


def controls_of(target: str) -> str:
    """The control requests for every attempt an executor of ``target`` (``agent:NAME``, ``dest:NAME``) runs."""
    return control(target, "*")


def dest_controls() -> str:
    """The control requests for attempts of every destination (relays carry them to the workers' NATS)."""
    return f"{ROOT}.ctl.dest.>"


def attempt_of_control(subject: str) -> str:
    """The attempt ID a control subject names."""
    return subject.rsplit(".", 1)[-1]


# -- what NATS permissions name (see ekiden.natsauth and docs/security.md) ------------------------------

#: Prefix of JetStream's API subjects.
JS_API = "$JS.API"


def inbox_prefix(role: str, name: str) -> str:
    """The reply-inbox prefix of one credential: its holder may subscribe under it and nowhere else's."""
    return f"_INBOX.{check_name(role, 'role')}.{check_name(name, 'credential')}"


def under(prefix: str) -> str:
    """Every subject below ``prefix`` (a permission pattern)."""
    return f"{prefix}.>"


def all_events() -> str:
    """Events subjects of every server ID (agents and relays report to whichever manager sent the job)."""
    return f"{ROOT}.*.evt"


def all_agent_runs() -> str:
    """Dispatch subjects of every standard agent."""
    return f"{ROOT}.agent.*.run"


def all_relay_runs() -> str:
    """Dispatch subjects of every relay name."""
    return f"{ROOT}.relay.*.run"


def all_relay_events() -> str:
    """Events subjects of every relay name (a worker reports to the relay its job names)."""
    return f"{ROOT}.relay.*.evt"


def all_relay_stats() -> str:
    """Stats subjects of every relay name."""
    return f"{ROOT}.relay.*.stats"


def all_dest_runs() -> str:
    """Every destination's work-queue subject (relays publish into the streams)."""
    return f"{ROOT}.dest.*.run"


def api_grant(tenant: str, verb: str = "*") -> str:
    """An operator's API grant: ``verb`` (or every verb) of any server ID, as ``tenant`` (``ALL_TENANTS``: admin)."""
    token = _tenant_token(tenant)
    return f"{ROOT}.*.api.{token}.{verb if verb == '*' else check_name(verb, 'API verb')}"


def output(sid: str, tenant: str, attempt_id: str) -> str:
    """Live output of one running attempt (best effort; the whole kept output comes with its result)."""
    return f"{ROOT}.{check_name(sid, 'server id')}.out.{check_name(tenant, 'tenant')}.{attempt_id}"


def all_output() -> str:
    """Live output of every attempt, for executors to publish and relays to carry upstream."""
    return output_grant(None)


def output_grant(tenant: str | None) -> str:
    """Live output of every attempt of ``tenant`` (None: of every tenant), for operators to follow."""
    return f"{ROOT}.*.out.{'*' if tenant is None else check_name(tenant, 'tenant')}.*"


def run_updates_grant(tenant: str | None) -> str:
    """Progress of every run of ``tenant`` (None: of every tenant) of any server ID."""
    return f"{ROOT}.*.run.{'*' if tenant is None else check_name(tenant, 'tenant')}.*"


def js_stream_api(action: str, stream: str = "*") -> str:
    """A JetStream stream API subject (``action``: ``STREAM.INFO``, ``STREAM.CREATE``, ``STREAM.MSG.GET``...)."""
    return f"{JS_API}.{action}.{stream}"


def js_consumer_api(action: str, stream: str = "*", consumer: str = DEST_CONSUMER) -> str:
    """A JetStream consumer API subject (``action``: ``CONSUMER.INFO``, ``CONSUMER.MSG.NEXT``...)."""
    return f"{JS_API}.{action}.{stream}.{consumer}"


def js_acks(stream: str, consumer: str = DEST_CONSUMER) -> str:
    """Acks (and naks, in-progress, terms) of messages delivered by one consumer."""
    return f"$JS.ACK.{stream}.{consumer}.>"
