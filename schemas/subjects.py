"""Every NATS subject, stream and consumer name Ekiden uses, built in one place."""

from schemas.names import check_name

#: Root token of every subject.
ROOT = "ekiden"
#: Standard agents and destination workers announce themselves here.
REGISTER = f"{ROOT}.reg"
#: Every standard agent's heartbeat, for managers.
ALL_AGENT_HEARTBEATS = f"{ROOT}.agent.*.hb"
#: Queue group shared by the managers of one server ID (only the active one subscribes).
MANAGER_QUEUE = "manager"
#: Queue group shared by relays of one name.
RELAY_QUEUE = "relay"
#: The durable pull consumer that every worker of a destination shares.
DEST_CONSUMER = "workers"


def api(sid: str, verb: str) -> str:
    """Request-reply control API verb of the manager holding server ID ``sid``."""
    return f"{ROOT}.{check_name(sid, 'server id')}.api.{verb}"


def api_all(sid: str) -> str:
    """Wildcard the active manager subscribes to for every API verb."""
    return f"{ROOT}.{check_name(sid, 'server id')}.api.*"


def events(sid: str) -> str:
    """Accepted, started, heartbeat and finished events for server ID ``sid``; the reply is the ack."""
    return f"{ROOT}.{check_name(sid, 'server id')}.evt"


def hello(sid: str) -> str:
    """A manager became active for ``sid``: outboxes resend what is not yet acked."""
    return f"{ROOT}.{check_name(sid, 'server id')}.hello"


def hello_all() -> str:
    """Wildcard that agents and relays subscribe to: a manager of any server ID became active."""
    return f"{ROOT}.*.hello"


def run_updates(sid: str, run_id: str) -> str:
    """Live state changes of one run, published after they are committed."""
    return f"{ROOT}.{check_name(sid, 'server id')}.run.{check_name(run_id, 'run id')}"


def all_run_updates(sid: str) -> str:
    """Live state changes of every run of ``sid``."""
    return f"{ROOT}.{check_name(sid, 'server id')}.run.*"


def agent_run(name: str) -> str:
    """Dispatch subject of one standard agent; the reply acks acceptance."""
    return f"{ROOT}.agent.{check_name(name, 'agent')}.run"


def agent_heartbeat(name: str) -> str:
    """Heartbeat and inventory of one standard agent."""
    return f"{ROOT}.agent.{check_name(name, 'agent')}.hb"


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


def dest_run(name: str) -> str:
    """Subject of a destination's JetStream work-queue stream."""
    return f"{ROOT}.dest.{check_name(name, 'destination')}.run"


def dest_stream(name: str) -> str:
    """JetStream stream name of a destination."""
    return f"EKIDEN_DEST_{check_name(name, 'destination')}"


def control_all() -> str:
    """Every attempt's control subject: executors subscribe once and pick out the attempts they run."""
    return f"{ROOT}.ctl.>"


def control(attempt_id: str) -> str:
    """Kill and signal requests for whoever runs this attempt."""
    return f"{ROOT}.ctl.{attempt_id}"
