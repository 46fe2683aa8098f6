"""The site database's schema, as numbered migrations applied in order; ``meta.schema_version`` says how far."""

#: Each entry upgrades the schema from version ``index`` to ``index + 1``.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE lease(
        name TEXT PRIMARY KEY, holder TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
        epoch INTEGER NOT NULL, expires_at REAL NOT NULL, acquired_at REAL NOT NULL);
    CREATE TABLE jobnet_versions(
        name TEXT NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL, digest TEXT NOT NULL,
        tenant TEXT NOT NULL, applied_at REAL NOT NULL, PRIMARY KEY(name, version)) WITHOUT ROWID;
    CREATE TABLE destinations(name TEXT PRIMARY KEY, body TEXT NOT NULL, applied_at REAL NOT NULL) WITHOUT ROWID;
    CREATE TABLE runs(
        run_id INTEGER PRIMARY KEY, jobnet TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL,
        tenant TEXT NOT NULL, params TEXT NOT NULL, created_at REAL NOT NULL, ended_at REAL);
    CREATE INDEX runs_by_state ON runs(state);
    CREATE INDEX runs_by_jobnet ON runs(jobnet, run_id);
    CREATE TABLE jobs(
        run_id INTEGER NOT NULL, job_id TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL,
        attempt_id TEXT, exit_code INTEGER, started_at REAL, ended_at REAL, reason TEXT NOT NULL,
        PRIMARY KEY(run_id, job_id)) WITHOUT ROWID;
    CREATE TABLE attempts(
        attempt_id TEXT PRIMARY KEY, run_id INTEGER NOT NULL, job_id TEXT NOT NULL, n INTEGER NOT NULL,
        target TEXT NOT NULL, dispatched_at REAL NOT NULL, accepted_at REAL, started_at REAL, finished_at REAL,
        reported_at REAL, status TEXT NOT NULL, exit_code INTEGER, host TEXT NOT NULL, pid INTEGER,
        reason TEXT NOT NULL, stdout BLOB, stderr BLOB, truncated_bytes INTEGER);
    CREATE INDEX attempts_by_job ON attempts(run_id, job_id, n);
    CREATE TABLE agents(
        name TEXT PRIMARY KEY, kind TEXT NOT NULL, inventory TEXT NOT NULL, registered_at REAL NOT NULL,
        last_seen REAL NOT NULL, state TEXT NOT NULL) WITHOUT ROWID;
    """,
    # 2: site settings (maintenance survives a failover), managers seen (active and standby), the time a
    # relay confirmed an attempt is in its destination's JetStream queue, and agent routing state.
    """
    CREATE TABLE site_settings(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE managers(
        holder TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, role TEXT NOT NULL,
        started_at REAL NOT NULL, seen_at REAL NOT NULL) WITHOUT ROWID;
    ALTER TABLE attempts ADD COLUMN queued_at REAL;
    ALTER TABLE agents ADD COLUMN used_at REAL NOT NULL DEFAULT 0;
    """,
    # 3: agent settings and agent groups, applied like destinations (latest definition wins).
    """
    CREATE TABLE agent_definitions(
        kind TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL, applied_at REAL NOT NULL,
        PRIMARY KEY(kind, name)) WITHOUT ROWID;
    """,
    # 4: operating running work: held runs, a dedupe key per run submission, the audit log of operator
    # actions, and the holders of named resource locks.
    """
    ALTER TABLE runs ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN dedupe_key TEXT;
    ALTER TABLE jobs ADD COLUMN bypassed INTEGER NOT NULL DEFAULT 0;
    CREATE UNIQUE INDEX runs_by_dedupe_key ON runs(dedupe_key) WHERE dedupe_key IS NOT NULL;
    CREATE TABLE audit(
        id INTEGER PRIMARY KEY, ts REAL NOT NULL, who TEXT NOT NULL, origin TEXT NOT NULL, action TEXT NOT NULL,
        target TEXT NOT NULL, detail TEXT NOT NULL, outcome TEXT NOT NULL);
    CREATE INDEX audit_by_ts ON audit(ts);
    CREATE TABLE lock_holders(
        lock TEXT NOT NULL, holder TEXT NOT NULL, weight INTEGER NOT NULL, mode TEXT NOT NULL,
        acquired_at REAL NOT NULL, PRIMARY KEY(lock, holder)) WITHOUT ROWID;
    """,
    # 5: calendars and schedules, applied like destinations (latest definition wins); each schedule's state
    # and next fire time (indexed for the scheduler's due query); one row per fire, unique per schedule and
    # fire time, written with the run it starts; one-off changes of single fire times.
    """
    CREATE TABLE calendars(
        name TEXT PRIMARY KEY, body TEXT NOT NULL, digest TEXT NOT NULL, applied_at REAL NOT NULL) WITHOUT ROWID;
    CREATE TABLE schedules(
        name TEXT PRIMARY KEY, body TEXT NOT NULL, digest TEXT NOT NULL, applied_at REAL NOT NULL,
        enabled INTEGER NOT NULL, held INTEGER NOT NULL, next_fire_at INTEGER, next_key INTEGER) WITHOUT ROWID;
    CREATE INDEX schedules_due ON schedules(next_fire_at) WHERE enabled=1 AND held=0;
    CREATE TABLE fires(
        id INTEGER PRIMARY KEY, schedule TEXT NOT NULL, fire_at INTEGER NOT NULL, due_at INTEGER NOT NULL,
        fired_at REAL NOT NULL, run_id INTEGER NOT NULL, note TEXT NOT NULL, UNIQUE(schedule, fire_at));
    CREATE TABLE schedule_changes(
        schedule TEXT NOT NULL, original_at INTEGER NOT NULL, new_at INTEGER NOT NULL, made_at REAL NOT NULL,
        PRIMARY KEY(schedule, original_at)) WITHOUT ROWID;
    """,
    # 6: the jobnet language: a run's variables, its parent unit (nested jobnets, loop iterations) and flow
    # facts; each job's variables and unit progress (written only for runs and jobs that have any); the run
    # event log (delays, timeouts, retries, decisions); the delay before each retried attempt.
    """
    CREATE TABLE run_flow(
        run_id INTEGER PRIMARY KEY, variables TEXT NOT NULL, parent TEXT, state TEXT NOT NULL);
    CREATE INDEX run_flow_by_parent ON run_flow(parent) WHERE parent IS NOT NULL;
    CREATE TABLE job_flow(
        run_id INTEGER NOT NULL, job_id TEXT NOT NULL, variables TEXT NOT NULL, state TEXT NOT NULL,
        PRIMARY KEY(run_id, job_id)) WITHOUT ROWID;
    CREATE TABLE run_events(
        id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL, job_id TEXT NOT NULL, ts REAL NOT NULL,
        kind TEXT NOT NULL, detail TEXT NOT NULL);
    CREATE INDEX run_events_by_run ON run_events(run_id, id);
    ALTER TABLE attempts ADD COLUMN delay_s REAL;
    """,
    # 7: a run an operator killed (it ends stopped, across a manager swap too), and when a rerun reopened
    # a finished run (its timeout and delay watch count from then).
    """
    ALTER TABLE runs ADD COLUMN stopping INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN reopened_at REAL;
    """,
)

#: The schema version this code writes.
SCHEMA_VERSION = len(MIGRATIONS)
