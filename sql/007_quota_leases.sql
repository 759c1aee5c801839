-- Quota leases: quota a worker holds for a user for a few seconds, so that it can admit that
-- user's requests without a round trip. A worker takes a lease after it has admitted a user the
-- usual way and seen plenty of quota left; the lease's tokens are added to the user's reserved
-- tokens at once, so what is used and held together still never exceeds the quota, across any
-- number of workers and machines. While the lease lasts, the worker admits the requests that fit
-- in what is left of it by itself, and soon after reports those still in flight with
-- record_admissions: each becomes an ordinary reservation whose tokens move from the lease to the
-- reservation, so settle_batch and release_worker treat it like any other. A request that
-- settles before it is reported is never reported: its tokens stay in the lease (held twice
-- until the lease goes back, which errs on the side of the quota). What is left of a lease goes
-- back to the counter with return_leases when it expires; the leases of a worker that stopped
-- or died go back with its reservations (release_worker).
--
-- A lease is at most half of what the user had left when it was taken, so the workers that come
-- later still find quota: near the end of a quota, leases shrink and stop, and every request is
-- admitted one by one again.
--
-- Lock order (see 005), with leases between reservations and counters: api_keys rows, existing
-- reservations, quota_leases rows, usage_counters rows; new rows are inserted after.

CREATE TABLE IF NOT EXISTS tollgate.quota_leases (
    lease_id     uuid PRIMARY KEY,
    worker_id    text NOT NULL,
    user_id      bigint NOT NULL,
    period_start date NOT NULL,
    -- Held against the counter of (user_id, period_start) and not yet handed to a reservation.
    tokens       bigint NOT NULL CHECK (tokens >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);

CREATE INDEX IF NOT EXISTS quota_leases_worker_id ON tollgate.quota_leases (worker_id);

-- Authenticates one caller (as authenticate_batch) and, for a platform caller with a quota,
-- holds up to `wanted` tokens for this worker: at most half of the quota not used or held, none
-- when that is 0. `granted` is null when nothing limits the caller (no quota, or a BYOK key):
-- then only who they are is answered. expires_at: when the worker must stop admitting with
-- this answer (after `lifetime` seconds, or at the end of the quota's period).
CREATE OR REPLACE FUNCTION tollgate.take_lease(
    lease_id uuid, key_hash bytea, user_name text, wanted bigint, worker_id text, secret text,
    lifetime double precision)
RETURNS TABLE (outcome text, user_id bigint, key_id bigint, byok_key text, quota bigint, granted bigint,
               used bigint, reserved bigint, period_start date, period_end timestamptz, expires_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = tollgate, pg_temp AS $$
#variable_conflict use_column
DECLARE
    caller record;
    limit_tokens bigint;
    limit_period text;
    start date;
    ends timestamptz;
    until timestamptz := now() + make_interval(secs => greatest(coalesce(lifetime, 0), 0));
    counter_used bigint;
    counter_reserved bigint;
    grant_tokens bigint;
BEGIN
    SELECT c.* INTO caller FROM callers(ARRAY[key_hash], ARRAY[user_name], take_lease.secret) c;
    IF caller.outcome <> 'admitted' THEN
        RETURN QUERY SELECT caller.outcome, caller.user_id, caller.key_id, NULL::text, NULL::bigint, NULL::bigint,
                            NULL::bigint, NULL::bigint, NULL::date, NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;
    IF caller.key_id IS NOT NULL AND (caller.key_used_at IS NULL OR caller.key_used_at < now() - interval '1 minute')
    THEN
        PERFORM mark_keys_used(ARRAY[key_hash]);
    END IF;
    IF caller.byok_key IS NULL THEN
        SELECT q.tokens, q.period INTO limit_tokens, limit_period FROM quotas q WHERE q.user_id = caller.user_id;
    END IF;
    IF limit_tokens IS NULL THEN
        RETURN QUERY SELECT 'admitted'::text, caller.user_id, caller.key_id, caller.byok_key, NULL::bigint,
                            NULL::bigint, NULL::bigint, NULL::bigint, NULL::date, NULL::timestamptz, until;
        RETURN;
    END IF;

    start := period_start_of(limit_period, now());
    ends := period_end_of(limit_period, start);
    -- The worker's row lets a sweep find the lease should the worker die; the counter row
    -- exists once the user has been admitted in this period, which is when workers ask.
    INSERT INTO workers (worker_id) VALUES (take_lease.worker_id) ON CONFLICT DO NOTHING;
    INSERT INTO usage_counters (user_id, period_start) VALUES (caller.user_id, start) ON CONFLICT DO NOTHING;
    SELECT c.used_tokens, c.reserved_tokens INTO counter_used, counter_reserved
        FROM usage_counters c WHERE c.user_id = caller.user_id AND c.period_start = start FOR NO KEY UPDATE;
    grant_tokens := least(greatest(coalesce(wanted, 0), 0),
                          greatest((limit_tokens - counter_used - counter_reserved) / 2, 0));
    IF grant_tokens > 0 THEN
        UPDATE usage_counters c SET reserved_tokens = c.reserved_tokens + grant_tokens
            WHERE c.user_id = caller.user_id AND c.period_start = start;
        INSERT INTO quota_leases (lease_id, worker_id, user_id, period_start, tokens, expires_at)
            VALUES (take_lease.lease_id, take_lease.worker_id, caller.user_id, start, grant_tokens,
                    least(until, ends));
    END IF;
    RETURN QUERY SELECT 'admitted'::text, caller.user_id, caller.key_id, NULL::text, limit_tokens, grant_tokens,
                        counter_used, counter_reserved + grant_tokens, start, ends, least(until, ends);
END;
$$;

-- Records requests a worker admitted by itself: one reservation each, as admit_batch writes them,
-- holding holds[i] tokens taken from lease lease_ids[i] (null: a caller without a quota,
-- whose reservation holds nothing). A lease that is gone (returned, or released with a lost
-- worker) gave its tokens back already: the reservation then holds nothing. A request already in
-- the ledger, or already reserved, is skipped. Returns how many reservations were written.
CREATE OR REPLACE FUNCTION tollgate.record_admissions(
    request_ids uuid[], lease_ids uuid[], user_ids bigint[], key_ids bigint[], holds bigint[],
    estimated_inputs bigint[], endpoints text[], models text[], streams boolean[], worker_id text)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = tollgate, pg_temp SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    n integer := coalesce(cardinality(request_ids), 0);
    written integer;
BEGIN
    -- As for admissions (005): the commit does not wait for the disk.
    SET LOCAL synchronous_commit = off;
    IF cardinality(lease_ids) IS DISTINCT FROM n OR cardinality(user_ids) IS DISTINCT FROM n
       OR cardinality(key_ids) IS DISTINCT FROM n OR cardinality(holds) IS DISTINCT FROM n
       OR cardinality(estimated_inputs) IS DISTINCT FROM n OR cardinality(endpoints) IS DISTINCT FROM n
       OR cardinality(models) IS DISTINCT FROM n OR cardinality(streams) IS DISTINCT FROM n THEN
        RAISE EXCEPTION 'record_admissions: the arrays differ in length' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF n = 0 THEN
        RETURN 0;
    END IF;

    WITH locked AS MATERIALIZED (
        SELECT a.lease_id, a.period_start FROM quota_leases a
        WHERE a.lease_id = ANY(lease_ids) ORDER BY a.lease_id FOR UPDATE
    ), asked AS MATERIALIZED (
        SELECT DISTINCT ON (r.request_id) r.*, l.period_start
        FROM unnest(request_ids, lease_ids, user_ids, key_ids, holds, estimated_inputs, endpoints, models,
                    streams) WITH ORDINALITY
             AS r(request_id, lease_id, user_id, key_id, hold, estimated, endpoint, model, stream, n)
        LEFT JOIN locked l ON l.lease_id = r.lease_id
        WHERE r.request_id IS NOT NULL AND r.user_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM ledger g WHERE g.request_id = r.request_id)
        ORDER BY r.request_id, r.n
    ), recorded AS (
        INSERT INTO reservations (request_id, user_id, key_id, tokens, period_start, worker_id,
                                  endpoint, model, stream, estimated_input_tokens)
        SELECT r.request_id, r.user_id, r.key_id,
               CASE WHEN r.period_start IS NOT NULL THEN greatest(coalesce(r.hold, 0), 0) ELSE 0 END,
               r.period_start, record_admissions.worker_id, r.endpoint, r.model, r.stream,
               greatest(coalesce(r.estimated, 0), 0)
        FROM asked r ORDER BY r.request_id
        ON CONFLICT (request_id) DO NOTHING
        RETURNING request_id, tokens
    ), spent AS (
        SELECT a.lease_id, sum(w.tokens)::bigint AS tokens, count(*) AS requests
        FROM recorded w JOIN asked a ON a.request_id = w.request_id
        GROUP BY a.lease_id
    ), taken AS (
        UPDATE quota_leases x SET tokens = greatest(x.tokens - s.tokens, 0)
        FROM spent s WHERE x.lease_id = s.lease_id AND s.tokens > 0
    )
    SELECT coalesce(sum(s.requests), 0)::integer INTO written FROM spent s;
    RETURN written;
END;
$$;

-- Gives back what is left of each lease to its counter and deletes it. Returns the tokens
-- given back.
CREATE OR REPLACE FUNCTION tollgate.return_leases(lease_ids uuid[]) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = tollgate, pg_temp AS $$
#variable_conflict use_column
DECLARE
    counter_users bigint[];
    counter_starts date[];
    counter_tokens bigint[];
BEGIN
    WITH locked AS MATERIALIZED (
        SELECT a.lease_id FROM quota_leases a
        WHERE a.lease_id = ANY(lease_ids) ORDER BY a.lease_id FOR UPDATE
    ), gone AS (
        DELETE FROM quota_leases a USING locked l WHERE a.lease_id = l.lease_id
        RETURNING a.user_id, a.period_start, a.tokens
    ), summed AS (
        SELECT g.user_id, g.period_start, sum(g.tokens)::bigint AS tokens
        FROM gone g GROUP BY g.user_id, g.period_start ORDER BY g.user_id, g.period_start
    )
    SELECT array_agg(s.user_id), array_agg(s.period_start), array_agg(s.tokens)
        INTO counter_users, counter_starts, counter_tokens FROM summed s;
    IF counter_users IS NULL THEN
        RETURN 0;
    END IF;

    UPDATE usage_counters c SET reserved_tokens = greatest(c.reserved_tokens - d.tokens, 0)
        FROM (SELECT l.user_id, l.period_start, s.tokens
              FROM usage_counters l
              JOIN unnest(counter_users, counter_starts, counter_tokens) AS s(user_id, start, tokens)
                   ON l.user_id = s.user_id AND l.period_start = s.start
              ORDER BY l.user_id, l.period_start FOR NO KEY UPDATE OF l) d
        WHERE c.user_id = d.user_id AND c.period_start = d.period_start;
    RETURN (SELECT sum(t) FROM unnest(counter_tokens) t);
END;
$$;

-- As in 002, and the worker's leases are given back too: its reservations and leases are
-- locked first (in that order), then counters are changed in (user, period) order. Restated in
-- full: its callers (supervisors, sweep_stale_workers) know it by this name, and 002's body names
-- its parameter through the function's name, so that body cannot live on under another one.
CREATE OR REPLACE FUNCTION tollgate.release_worker(worker_id text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = tollgate, pg_temp AS $$
#variable_conflict use_column
DECLARE
    held record;
    inserted integer;
    released integer := 0;
    held_leases uuid[];
BEGIN
    PERFORM 1 FROM reservations r WHERE r.worker_id = release_worker.worker_id
        ORDER BY r.request_id FOR UPDATE;
    SELECT array_agg(a.lease_id) INTO held_leases
        FROM (SELECT a.lease_id FROM quota_leases a WHERE a.worker_id = release_worker.worker_id
              ORDER BY a.lease_id FOR UPDATE) a;

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
    IF held_leases IS NOT NULL THEN
        PERFORM return_leases(held_leases);
    END IF;

    DELETE FROM workers w WHERE w.worker_id = release_worker.worker_id;
    RETURN released;
END;
$$;

-- As in 002, and a worker without a row whose leases are that old is released as well.
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
        SELECT DISTINCT h.worker_id
        FROM (SELECT r.worker_id, r.created_at FROM reservations r
              UNION ALL SELECT a.worker_id, a.created_at FROM quota_leases a) h
        WHERE h.created_at < now() - max_age
          AND NOT EXISTS (SELECT 1 FROM workers w WHERE w.worker_id = h.worker_id)
        ORDER BY 1
    LOOP
        PERFORM release_worker(stale);
        swept := swept + 1;
    END LOOP;
    RETURN swept;
END;
$$;

REVOKE ALL ON FUNCTION
    tollgate.take_lease(uuid, bytea, text, bigint, text, text, double precision),
    tollgate.record_admissions(uuid[], uuid[], bigint[], bigint[], bigint[], bigint[], text[], text[], boolean[], text),
    tollgate.return_leases(uuid[])
FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    tollgate.take_lease(uuid, bytea, text, bigint, text, text, double precision),
    tollgate.record_admissions(uuid[], uuid[], bigint[], bigint[], bigint[], bigint[], text[], text[], boolean[], text),
    tollgate.return_leases(uuid[])
TO tollgate_worker;

GRANT SELECT ON tollgate.quota_leases TO tollgate_reporter;
