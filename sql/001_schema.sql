-- Tollgate metering schema: users, their API keys, BYOK keys, quotas, the counters and
-- reservations that admission works on, worker liveness, and the append-only usage ledger.
--
-- Applied by `tollgate migrate` inside one transaction, after it has taken the migration
-- advisory lock. Every statement is idempotent, so running the file twice changes nothing.
-- All token counts are in tokens; all times are timestamptz (UTC in every computation).

CREATE SCHEMA IF NOT EXISTS tollgate;

-- pgp_sym_encrypt / pgp_sym_decrypt for BYOK keys. When pgcrypto is already installed in
-- another schema, that installation is used (see byok_encrypt below).
CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA tollgate;

CREATE TABLE IF NOT EXISTS tollgate.users (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name <> '' AND length(name) <= 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz NULL
);

-- Only the SHA-256 of a key and a short display prefix are stored; the key itself is
-- printed once, when it is issued, and never again.
CREATE TABLE IF NOT EXISTS tollgate.api_keys (
    id           bigserial PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES tollgate.users (id),
    key_hash     bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    prefix       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz NULL,
    revoked_at   timestamptz NULL
);

CREATE INDEX IF NOT EXISTS api_keys_user_id ON tollgate.api_keys (user_id);

-- A user's own provider key, encrypted with pgp_sym_encrypt under TOLLGATE_SECRET.
CREATE TABLE IF NOT EXISTS tollgate.byok_keys (
    user_id    bigint PRIMARY KEY REFERENCES tollgate.users (id),
    ciphertext bytea NOT NULL,
    hint       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A user without a row here is unlimited (still metered in the ledger).
CREATE TABLE IF NOT EXISTS tollgate.quotas (
    user_id    bigint PRIMARY KEY REFERENCES tollgate.users (id),
    tokens     bigint NOT NULL CHECK (tokens > 0),
    period     text NOT NULL CHECK (period IN ('day', 'month', 'total')),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Running totals per user and quota period, so that the quota check reads one row whatever
-- the size of the ledger. period_start: the UTC day, the first day of the UTC month, or
-- 1970-01-01 for a 'total' quota.
CREATE TABLE IF NOT EXISTS tollgate.usage_counters (
    user_id         bigint NOT NULL REFERENCES tollgate.users (id),
    period_start    date NOT NULL,
    used_tokens     bigint NOT NULL DEFAULT 0 CHECK (used_tokens >= 0),
    reserved_tokens bigint NOT NULL DEFAULT 0 CHECK (reserved_tokens >= 0),
    PRIMARY KEY (user_id, period_start)
);

-- Tokens held by admitted requests that have not settled yet. tokens is what is held
-- against the counter of period_start; period_start is null (and tokens 0) for a user
-- without a quota, whose reservation only lets a lost worker's request reach the ledger.
CREATE TABLE IF NOT EXISTS tollgate.reservations (
    request_id             uuid PRIMARY KEY,
    user_id                bigint NOT NULL REFERENCES tollgate.users (id),
    key_id                 bigint NULL REFERENCES tollgate.api_keys (id),
    tokens                 bigint NOT NULL CHECK (tokens >= 0),
    period_start           date NULL,
    worker_id              text NOT NULL,
    endpoint               text NOT NULL,
    model                  text NOT NULL,
    stream                 boolean NOT NULL,
    estimated_input_tokens bigint NOT NULL CHECK (estimated_input_tokens >= 0),
    created_at             timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS reservations_worker_id ON tollgate.reservations (worker_id);

-- Liveness of worker processes (id: "host:pid"), refreshed by their supervisor.
CREATE TABLE IF NOT EXISTS tollgate.workers (
    worker_id    text PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- One row per admitted request, keyed by its request id so that a retried settlement cannot
-- count twice. Append-only: see the trigger below.
CREATE TABLE IF NOT EXISTS tollgate.ledger (
    request_id          uuid PRIMARY KEY,
    user_id             bigint NOT NULL REFERENCES tollgate.users (id),
    key_id              bigint NULL REFERENCES tollgate.api_keys (id),
    endpoint            text NOT NULL CHECK (endpoint IN ('chat.completions', 'responses')),
    model               text NOT NULL,
    stream              boolean NOT NULL,
    key_source          text NOT NULL CHECK (key_source IN ('platform', 'byok')),
    outcome             text NOT NULL CHECK (outcome <> ''),
    http_status         integer NOT NULL,
    input_tokens        bigint NOT NULL CHECK (input_tokens >= 0),
    cached_input_tokens bigint NOT NULL CHECK (cached_input_tokens >= 0),
    output_tokens       bigint NOT NULL CHECK (output_tokens >= 0),
    reasoning_tokens    bigint NOT NULL CHECK (reasoning_tokens >= 0),
    total_tokens        bigint NOT NULL CHECK (total_tokens >= 0),
    usage_source        text NOT NULL CHECK (usage_source IN ('reported', 'estimated')),
    started_at          timestamptz NOT NULL,
    ttfb_ms             double precision NULL,
    duration_ms         double precision NOT NULL,
    recorded_at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS ledger_user_started ON tollgate.ledger (user_id, started_at);
CREATE INDEX IF NOT EXISTS ledger_started ON tollgate.ledger (started_at);

-- The ledger is the record of what was spent: no role, the owner included, may change or
-- remove a row. (A superuser can still disable the trigger; that is deliberate and visible.)
CREATE OR REPLACE FUNCTION tollgate.ledger_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'tollgate.ledger is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE OR REPLACE TRIGGER ledger_append_only
    BEFORE UPDATE OR DELETE ON tollgate.ledger
    FOR EACH ROW EXECUTE FUNCTION tollgate.ledger_refuse_change();

CREATE OR REPLACE TRIGGER ledger_no_truncate
    BEFORE TRUNCATE ON tollgate.ledger
    FOR EACH STATEMENT EXECUTE FUNCTION tollgate.ledger_refuse_change();
