"""The wire's security fields: a dispatch's token and user, echoed tokens and event IDs that carry them."""

from schemas.definitions import parse_definitions
from schemas.messages import Envelope, Finished, JobSpec, JobStatus, Kind, event_for, event_id


def _dispatch(token: str) -> Envelope:
    spec = JobSpec("s:1:j:1", "j", "n", argv=("true",), token=token, user="batch")
    return Envelope(Kind.DISPATCH, "s", spec.to_wire(), epoch=3, run_id="1", job_run_id="1:j", attempt=1)


def test_a_dispatch_carries_its_token_and_user_and_every_event_echoes_the_token() -> None:
    dispatch = _dispatch("tok-123456789012345")
    spec = JobSpec.from_wire(dispatch.payload)
    assert (spec.token, spec.user) == ("tok-123456789012345", "batch")
    fin = Finished("s:1:j:1", JobStatus.SUCCEEDED, 0)
    for kind, payload in [(Kind.STARTED, {"pid": 1}), (Kind.FINISHED, fin.to_wire())]:
        env = event_for(dispatch, kind, payload, 1.0)
        assert env.payload["token"] == "tok-123456789012345"
        assert env.payload["eid"] == event_id("s:1:j:1", kind, 0, "tok-123456789012345")
        assert env.epoch == 3


def test_a_forged_event_never_has_the_id_of_the_genuine_one() -> None:
    genuine = event_for(_dispatch("right-token-abcdef"), Kind.FINISHED, {}, 1.0)
    forged = event_for(_dispatch("wrong-token-abcdef"), Kind.FINISHED, {}, 1.0)
    assert genuine.payload["eid"] != forged.payload["eid"]
    assert event_id("a", Kind.FINISHED) == "a:finished:0"  # without a token, as before


def test_user_is_kept_through_the_definitions_round_trip() -> None:
    raw = {"jobnet": {"n": {"job": [{"id": "a", "cmd": ["id"], "agent": "h", "user": "batch"}]}}}
    job = parse_definitions(raw).jobnets["n"].jobs[0]
    assert job.user == "batch"
    assert parse_definitions({"jobnet": {"n": job_net(job.to_dict())}}).jobnets["n"].jobs[0] == job


def job_net(job: dict[str, object]) -> dict[str, object]:
    return {"job": [job]}
