-- Admission and settlement as functions, so that each is one round trip and one transaction
-- for a worker: `SELECT * FROM tollgate.admit(...)` before forwarding a request and
-- `SELECT tollgate.settle(...)` once it is over. Plus the liveness functions with which any
-- machine frees the reservations of a worker that died.
--
-- Functions that workers call run as their owner (SECURITY DEFINER) with a fixed search_path,
-- so the worker role needs no privilege on the tables they touch.
-- Limitation: the BYOK secret travels as a parameter of admit(); a server configured to log
-- statements with their parameters (log_statement = 'all', log_min_duration_statement) writes
-- it to the server log. Keep parameter logging off on a metering database.

-- The first day of the quota period that contains `at`, in UTC; 1970-01-01 for 'total'.
CREATE OR REPLACE FUNCTION tollgate.period_start_of(period text, at timestamptz) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE period
        WHEN 'day' THEN (at AT TIME ZONE 'UTC')::date
        WHEN 'month' THEN date_trunc('month', at AT TIME ZONE 'UTC')::date
        ELSE date '1970-01-01'
    END
$$;

-- When the period starting on `start` ends (the quota resets); null for 'total'.
CREATE OR REPLACE FUNCTION tollgate.period_end_of(period text, start date) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE period
        WHEN 'day' THEN (start + 1)::timestamp AT TIME ZONE 'UTC'
        WHEN 'month' THEN (start + interval '1 month') AT TIME ZONE 'UTC'
        ELSE NULL
    END
$$;

-- BYOK encryption wrappers, bound to wherever pgcrypto is installed (normally tollgate).
DO $do$
DECLARE
    crypto text;
BEGIN
    SELECT n.nspname INTO STRICT crypto
        FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
        WHERE e.extname = 'pgcrypto';

    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION tollgate.byok_encrypt(plain text, secret text) RETURNS bytea
        LANGUAGE sql VOLATILE STRICT SET search_path = pg_catalog, pg_temp
        AS $body$ SELECT %1$I.pgp_sym_encrypt(plain, secret, 'cipher-algo=aes256') $body$
    $fn$, crypto);

    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION tollgate.byok_decrypt(ciphertext bytea, secret text) RETURNS text
        LANGUAGE sql VOLATILE STRICT SET search_path = pg_catalog, pg_temp
        AS $body$ SELECT %1$I.pgp_sym_decrypt(ciphertext, secret) $body$
    $fn$, crypto);
END;
$do$;

-- Who is calling: by the SHA-256 of a Tollgate API key (bearer mode) or by user name (header
-- mode, when key_hash is null). outcome is 'admitted', 'unknown_key', 'revoked_key',
-- 'unknown_user', 'disabled_user', 'byok_secret_missing' or 'byok_secret_invalid'; byok_key is
-- the decrypted BYOK key of a BYOK user, null otherwise. Marks the key used (at most once a
-- minute, to keep writes off the hot path).
CREATE OR REPLACE FUNCTION tollgate.authenticate(
    key_hash bytea, user_name text, secret text,
    OUT outcome text, OUT user_id bigint, OUT key_id bigint, OUT byok_key text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = tollgate, pg_temp AS $$
#variable_conflict use_column
DECLARE
    key_revoked_at timestamptz;
    key_used_at timestamptz;
    user_disabled_at timestamptz;
    cipher bytea;
BEGIN
    IF authenticate.key_hash IS NOT NULL THEN
        SELECT k.id, k.user_id, k.revoked_at, k.last_used_at
            INTO authenticate.key_id, authenticate.user_id, key_revoked_at, key_used_at
            FROM api_keys k WHERE k.key_hash = authenticate.key_hash;
        IF NOT FOUND THEN
            outcome := 'unknown_key';
            RETURN;
        END IF;
        IF key_revoked_at IS NOT NULL THEN
            outcome := 'revoked_key';
            RETURN;
        END IF;
        SELECT u.disabled_at INTO user_disabled_at FROM users u WHERE u.id = authenticate.user_id;
    ELSE
        SELECT u.id, u.disabled_at INTO authenticate.user_id, user_disabled_at
            FROM users u WHERE u.name = authenticate.user_name;
        IF NOT FOUND THEN
            outcome := 'unknown_user';
            RETURN;
        END IF;
    END IF;

    IF user_disabled_at IS NOT NULL THEN
        outcome := 'disabled_user';
        RETURN;
    END IF;

    IF authenticate.key_id IS NOT NULL AND (key_used_at IS NULL OR key_used_at < now() - interval '1 minute') THEN
        UPDATE api_keys k SET last_used_at = now() WHERE k.id = authenticate.key_id;
    END IF;

    SELECT b.ciphertext INTO cipher FROM byok_keys b WHERE b.user_id = authenticate.user_id;
    IF FOUND THEN
        IF coalesce(authenticate.secret, '') = '' THEN
            outcome := 'byok_secret_missing';
            RETURN;
        END IF;
        BEGIN
            byok_key := byok_decrypt(cipher, authenticate.secret);
        EXCEPTION WHEN external_routine_invocation_exception THEN
            -- pgcrypto refuses a wrong secret ("Wrong key or corrupt data"): a configuration
            -- fault of the gateway, reported as such rather than as a failed query.
            byok_key := NULL;
            outcome := 'byok_secret_invalid';
            RETURN;
        END;
    END IF;

    outcome := 'admitted';
END;
$$;

-- Authenticates, then holds `reserve` tokens against the caller's quota. BYOK users are not
-- limited and get no reservation. For platform users the counter row of the current period is
-- created if missing, then ONE conditional UPDATE adds the reservation only while
-- used + reserved + reserve <= quota: the row lock it takes serialises concurrent admissions of
-- a user, and the condition is re-checked after the wait, so no interleaving overshoots.
-- quota, used, reserved (after this reservation) and period_end describe the standing; quota
-- is null for an unlimited user.
CREATE OR REPLACE FUNCTION tollgate.admit(
    request_id uuid, key_hash bytea, user_name text, reserve bigint, estimated_input bigint,
    endpoint text, model text, stream boolean, worker_id text, secret text,
    OUT outcome text, OUT user_id bigint, OUT key_id bigint, OUT byok_key text,
    OUT quota bigint, OUT used bigint, OUT reserved bigint, OUT period_end timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = tollgate, pg_temp AS $$
#variable_conflict use_column
DECLARE
    quota_period text;
    start date;
    hold bigint := greatest(coalesce(admit.reserve, 0), 0);
BEGIN
    SELECT a.outcome, a.user_id, a.key_id, a.byok_key
        INTO admit.outcome, admit.user_id, admit.key_id, admit.byok_key
        FROM authenticate(admit.key_hash, admit.user_name, admit.secret) a;
    IF admit.outcome <> 'admitted' OR admit.byok_key IS NOT NULL THEN
        RETURN;
    END IF;

    -- No lock is taken on an existing worker row, so admissions never queue behind each other here.
    INSERT INTO workers (worker_id) VALUES (admit.worker_id) ON CONFLICT DO NOTHING;

    SELECT q.tokens, q.period INTO admit.quota, quota_period FROM quotas q WHERE q.user_id = admit.user_id;
    IF NOT FOUND THEN
        INSERT INTO reservations (request_id, user_id, key_id, tokens, period_start, worker_id,
                                  endpoint, model, stream, estimated_input_tokens)
        VALUES (admit.request_id, admit.user_id, admit.key_id, 0, NULL, admit.worker_id,
                admit.endpoint, admit.model, admit.stream, greatest(coalesce(admit.estimated_input, 0), 0));
        RETURN;
    END IF;

    start := period_start_of(quota_period, now());
    period_end := period_end_of(quota_period, start);

    INSERT INTO usage_counters (user_id, period_start) VALUES (admit.user_id, start) ON CONFLICT DO NOTHING;
    UPDATE usage_counters c SET reserved_tokens = c.reserved_tokens + hold
        WHERE c.user_id = admit.user_id AND c.period_start = start
          AND c.used_tokens + c.reserved_tokens + hold <= admit.quota
        RETURNING c.used_tokens, c.reserved_tokens INTO admit.used, admit.reserved;
    IF NOT FOUND THEN
        SELECT c.used_tokens, c.reserved_tokens INTO admit.used, admit.reserved
            FROM usage_counters c WHERE c.user_id = admit.user_id AND c.period_start = start;
        outcome := 'insufficient_quota';
        RETURN;
    END IF;

    INSERT INTO reservations (request_id, user_id, key_id, tokens, period_start, worker_id,
                              endpoint, model, stream, estimated_input_tokens)
    VALUES (admit.request_id, admit.user_id, admit.key_id, hold, start, admit.worker_id,
            admit.endpoint, admit.model, admit.stream, greatest(coalesce(admit.estimated_input, 0), 0));
END;
$$;

-- Records a finished request in the ledger and releases its reservation. Idempotent by
-- request id: a retry finds the ledger row and changes nothing. Returns whether the row is new.
CREATE OR REPLACE FUNCTION tollgate.settle(
    request_id uuid, user_id bigint, key_id bigint, endpoint text, model text, stream boolean,
    key_source text, outcome text, http_status integer, input bigint, cached bigint, output bigint,
    reasoning bigint, total bigint, usage_source text, started_at timestamptz, ttfb_ms double precision,
    duration_ms double precision)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = tollgate, pg_temp AS $$
#variable_conflict use_column
DECLARE
    held_user bigint;
    held_tokens bigint;
    held_start date;
    inserted integer;
BEGIN
    -- The reservation row is locked first (by deleting it), as release_worker does, so that a
    -- settlement racing a release of the same request waits instead of deadlocking.
    DELETE FROM reservations r WHERE r.request_id = settle.request_id
        RETURNING r.user_id, r.tokens, r.period_start INTO held_user, held_tokens, held_start;

    INSERT INTO ledger (request_id, user_id, key_id, endpoint, model, stream, key_source, outcome,
                        http_status, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens,
                        total_tokens, usage_source, started_at, ttfb_ms, duration_ms)
    VALUES (settle.request_id, settle.user_id, settle.key_id, settle.endpoint, settle.model, settle.stream,
            settle.key_source, settle.outcome, settle.http_status, greatest(settle.input, 0),
            greatest(settle.cached, 0), greatest(settle.output, 0), greatest(settle.reasoning, 0),
            greatest(settle.total, 0), settle.usage_source, settle.started_at, settle.ttfb_ms,
            greatest(settle.duration_ms, 0))
    ON CONFLICT (request_id) DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;

    IF held_start IS NOT NULL THEN
        UPDATE usage_counters c
            SET reserved_tokens = greatest(c.reserved_tokens - held_tokens, 0),
                used_tokens = c.used_tokens + CASE WHEN inserted > 0 THEN greatest(settle.total, 0) ELSE 0 END
            WHERE c.user_id = held_user AND c.period_start = held_start;
    END IF;
    RETURN inserted > 0;
END;
$$;

-- Settles every reservation of a worker that is gone: one 'worker_lost' ledger row each, with
-- the estimated input as its usage, and the held tokens released. Deletes the worker's row.
-- Returns the number of reservations released.
CREATE OR REPLACE FUNCTION tollgate.release_worker(worker_id text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = tollgate, pg_temp AS $$
#variable_conflict use_column
DECLARE
    held record;
    inserted integer;
    released integer := 0;
BEGIN
    -- Lock all of them before touching any counter: a settlement holding one of these rows then
    -- finishes (its counter is not locked yet) instead of waiting on us while we wait on it.
    PERFORM 1 FROM reservations r WHERE r.worker_id = release_worker.worker_id
        ORDER BY r.request_id FOR UPDATE;

    -- Counters are updated in (user, period) order, so two releases never lock them crosswise.
    FOR held IN
        SELECT * FROM reservations r WHERE r.worker_id = release_worker.worker_id
            ORDER BY r.user_id, r.period_start, r.request_id
    LOOP
        INSERT INTO ledger (request_id, user_id, key_id, endpoint, model, stream, key_source, outcome,
                            http_status, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens,
                            total_tokens, usage_source, started_at, ttfb_ms, duration_ms)
        VALUES (held.request_id, held.user_id, held.key_id, held.endpoint, held.model, held.stream,
                'platform', 'worker_lost', 0, held.estimated_input_tokens, 0, 0, 0,
                held.estimated_input_tokens, 'estimated', held.created_at, NULL,
                greatest(extract(epoch FROM now() - held.created_at) * 1000, 0))
        ON CONFLICT (request_id) DO NOTHING;
        GET DIAGNOSTICS inserted = ROW_COUNT;

        IF held.period_start IS NOT NULL THEN
            UPDATE usage_counters c
                SET reserved_tokens = greatest(c.reserved_tokens - held.tokens, 0),
                    used_tokens = c.used_tokens + CASE WHEN inserted > 0 THEN held.estimated_input_tokens ELSE 0 END
                WHERE c.user_id = held.user_id AND c.period_start = held.period_start;
        END IF;
        DELETE FROM reservations r WHERE r.request_id = held.request_id;
        released := released + 1;
    END LOOP;

    DELETE FROM workers w WHERE w.worker_id = release_worker.worker_id;
    RETURN released;
END;
$$;

-- Marks workers alive now (called by their supervisor every few seconds).
CREATE OR REPLACE FUNCTION tollgate.heartbeat(worker_ids text[]) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = tollgate, pg_temp AS $$
    INSERT INTO tollgate.workers (worker_id, heartbeat_at)
    SELECT DISTINCT id, now() FROM unnest(worker_ids) AS id WHERE id IS NOT NULL ORDER BY 1
    ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at;
$$;

-- Releases every worker whose heartbeat is older than max_age, and the reservations of workers
-- that have no row at all once they are that old. Any machine may run it: a dead machine's
-- reservations are freed by the others. Returns the number of workers released.
CREATE OR REPLACE FUNCTION tollgate.sweep_stale_workers(max_age interval) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = tollgate, pg_temp AS $$
DECLARE
    stale text;
    swept integer := 0;
BEGIN
    FOR stale IN
        SELECT w.worker_id FROM workers w WHERE w.heartbeat_at < now() - max_age
            ORDER BY w.worker_id FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM release_worker(stale);
        swept := swept + 1;
    END LOOP;

    FOR stale IN
        SELECT DISTINCT r.worker_id FROM reservations r
            WHERE r.created_at < now() - max_age
              AND NOT EXISTS (SELECT 1 FROM workers w WHERE w.worker_id = r.worker_id)
            ORDER BY 1
    LOOP
        PERFORM release_worker(stale);
        swept := swept + 1;
    END LOOP;
    RETURN swept;
END;
$$;

-- Sets a user's quota (admin). When the user has no counter for the current period yet, it is
-- seeded from the ledger, so a quota added mid-period counts what was already spent.
CREATE OR REPLACE FUNCTION tollgate.set_quota(user_name text, tokens bigint, period text) RETURNS bigint
LANGUAGE plpgsql SET search_path = tollgate, pg_temp AS $$
#variable_conflict use_column
DECLARE
    target bigint;
    start date := period_start_of(set_quota.period, now());
BEGIN
    SELECT u.id INTO target FROM users u WHERE u.name = set_quota.user_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no user named %', set_quota.user_name USING ERRCODE = 'no_data_found';
    END IF;

    INSERT INTO quotas AS q (user_id, tokens, period, updated_at)
    VALUES (target, set_quota.tokens, set_quota.period, now())
    ON CONFLICT (user_id) DO UPDATE SET tokens = excluded.tokens, period = excluded.period, updated_at = now();

    INSERT INTO usage_counters (user_id, period_start, used_tokens)
    SELECT target, start, coalesce(sum(l.total_tokens), 0) FROM ledger l
        WHERE l.user_id = target AND l.key_source = 'platform'
          AND l.started_at >= start::timestamp AT TIME ZONE 'UTC'
    ON CONFLICT DO NOTHING;
    RETURN target;
END;
$$;
