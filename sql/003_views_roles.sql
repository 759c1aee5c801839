-- Views for DBAs and reporting, and the two roles the operator grants to login roles:
--   tollgate_worker   - what a gateway worker needs: the admission and settlement functions,
--                       INSERT and SELECT on the ledger (never UPDATE or DELETE);
--   tollgate_reporter - read-only: the ledger, users, quotas, the views, and the harmless
--                       columns of api_keys and byok_keys (never key hashes or ciphertext).
-- Creating the roles needs CREATEROLE the first time (migrate as the database owner or a superuser).
-- No view or grant exposes an API key or a BYOK key in clear; the only decryption is inside
-- authenticate(), which hands the BYOK key to the worker that admits the request.

CREATE OR REPLACE VIEW tollgate.usage_per_user_day AS
SELECT l.user_id,
       u.name AS user_name,
       (l.started_at AT TIME ZONE 'UTC')::date AS day,
       count(*) AS requests,
       sum(l.input_tokens) AS input_tokens,
       sum(l.cached_input_tokens) AS cached_input_tokens,
       sum(l.output_tokens) AS output_tokens,
       sum(l.reasoning_tokens) AS reasoning_tokens,
       sum(l.total_tokens) AS total_tokens,
       count(*) FILTER (WHERE l.usage_source = 'estimated') AS estimated_requests,
       count(*) FILTER (WHERE l.key_source = 'byok') AS byok_requests
FROM tollgate.ledger l
JOIN tollgate.users u ON u.id = l.user_id
GROUP BY l.user_id, u.name, (l.started_at AT TIME ZONE 'UTC')::date;

CREATE OR REPLACE VIEW tollgate.usage_per_model_day AS
SELECT (l.started_at AT TIME ZONE 'UTC')::date AS day,
       l.endpoint,
       l.model,
       count(*) AS requests,
       count(DISTINCT l.user_id) AS users,
       sum(l.input_tokens) AS input_tokens,
       sum(l.cached_input_tokens) AS cached_input_tokens,
       sum(l.output_tokens) AS output_tokens,
       sum(l.reasoning_tokens) AS reasoning_tokens,
       sum(l.total_tokens) AS total_tokens,
       count(*) FILTER (WHERE l.usage_source = 'estimated') AS estimated_requests
FROM tollgate.ledger l
GROUP BY (l.started_at AT TIME ZONE 'UTC')::date, l.endpoint, l.model;

-- Each limited user's standing in the current period; remaining never goes below 0.
CREATE OR REPLACE VIEW tollgate.quota_standing AS
SELECT u.id AS user_id,
       u.name AS user_name,
       q.period,
       tollgate.period_start_of(q.period, now()) AS period_start,
       q.tokens AS quota,
       coalesce(c.used_tokens, 0) AS used,
       coalesce(c.reserved_tokens, 0) AS reserved,
       greatest(q.tokens - coalesce(c.used_tokens, 0) - coalesce(c.reserved_tokens, 0), 0) AS remaining,
       tollgate.period_end_of(q.period, tollgate.period_start_of(q.period, now())) AS period_end
FROM tollgate.quotas q
JOIN tollgate.users u ON u.id = q.user_id
LEFT JOIN tollgate.usage_counters c
       ON c.user_id = q.user_id AND c.period_start = tollgate.period_start_of(q.period, now());

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tollgate_worker') THEN
        CREATE ROLE tollgate_worker NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tollgate_reporter') THEN
        CREATE ROLE tollgate_reporter NOLOGIN;
    END IF;
END;
$$;

GRANT USAGE ON SCHEMA tollgate TO tollgate_worker, tollgate_reporter;

-- Functions are executable by PUBLIC by default; only the roles below may call these.
REVOKE ALL ON FUNCTION
    tollgate.byok_encrypt(text, text),
    tollgate.byok_decrypt(bytea, text),
    tollgate.authenticate(bytea, text, text),
    tollgate.admit(uuid, bytea, text, bigint, bigint, text, text, boolean, text, text),
    tollgate.settle(uuid, bigint, bigint, text, text, boolean, text, text, integer, bigint, bigint, bigint,
                    bigint, bigint, text, timestamptz, double precision, double precision),
    tollgate.release_worker(text),
    tollgate.heartbeat(text[]),
    tollgate.sweep_stale_workers(interval),
    tollgate.set_quota(text, bigint, text),
    tollgate.ledger_refuse_change()
FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    tollgate.authenticate(bytea, text, text),
    tollgate.admit(uuid, bytea, text, bigint, bigint, text, text, boolean, text, text),
    tollgate.settle(uuid, bigint, bigint, text, text, boolean, text, text, integer, bigint, bigint, bigint,
                    bigint, bigint, text, timestamptz, double precision, double precision),
    tollgate.release_worker(text),
    tollgate.heartbeat(text[]),
    tollgate.sweep_stale_workers(interval)
TO tollgate_worker;

GRANT SELECT, INSERT ON tollgate.ledger TO tollgate_worker;

GRANT SELECT ON
    tollgate.ledger, tollgate.users, tollgate.quotas, tollgate.usage_counters,
    tollgate.usage_per_user_day, tollgate.usage_per_model_day, tollgate.quota_standing
TO tollgate_reporter;
GRANT SELECT (id, user_id, prefix, created_at, last_used_at, revoked_at) ON tollgate.api_keys TO tollgate_reporter;
GRANT SELECT (user_id, hint, created_at, updated_at) ON tollgate.byok_keys TO tollgate_reporter;
