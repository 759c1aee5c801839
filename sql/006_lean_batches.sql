-- Cheaper batches. Under load a batch carries a handful of requests, so what a batch costs
-- PostgreSQL whatever its size dominates: starting the executor for each statement of the
-- function, a sort for every ordered aggregate, a PL/pgSQL assignment per answer column and
-- request. Measured with pgbench on batches of 8 (an admission and a settlement), most of the
-- time went there. Semantics, signatures, grants and the lock order of 005 stay.
--
-- admit_batch_fast, which the workers call, answers the usual batch with ONE statement: every
-- caller known or refused, the worker's row and every counter row already there, no key due to
-- be marked used, and every user's requests fitting in their quota together (then, decided one
-- by one in batch order, all of them fit as well, so the answers are those of 005). Anything
-- else (a key to mark, a first batch of a period or of a worker, a user at the edge of their
-- quota) goes to 005's admit_batch, which decides request by request; admit() still calls it.
-- The statement takes no lock before it knows that no key needs marking, so the lock order
-- holds on either path: keys, then counter rows in (user, period) order, then reservations. A
-- batch of one, which is what a client of a lightly loaded worker waits on, takes a few
-- single-row statements instead, whose plans cost far less to start.
--
-- settle_batch does 005's work in three statements instead of five, with one sort per array
-- instead of one per ordered aggregate, and answers with one query instead of a loop; a batch
-- of one whose request holds a reservation takes three single-row statements.

CREATE OR REPLACE FUNCTION tollgate.admit_batch_fast(
    request_ids uuid[], key_hashes bytea[], user_names text[], reserves bigint[], estimated_inputs bigint[],
    endpoints text[], models text[], streams boolean[], worker_id text, secret text)
RETURNS TABLE (ordinal integer, outcome text, user_id bigint, key_id bigint, byok_key text,
               quota bigint, used bigint, reserved bigint, period_end timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = tollgate, pg_temp SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    n integer := coalesce(cardinality(request_ids), 0);
    answered integer;
    -- A batch of one: the caller, and their counter after the reservation.
    caller_key bigint;
    caller_user bigint;
    caller_usable boolean;
    caller_quota bigint;
    caller_period text;
    caller_start date;
    caller_hold bigint;
    counter_used bigint;
    counter_reserved bigint;
BEGIN
    -- As in admit_batch (005): the commit does not wait for the disk.
    SET LOCAL synchronous_commit = off;
    IF n = 0 THEN
        RETURN;
    END IF;
    IF cardinality(key_hashes) IS DISTINCT FROM n OR cardinality(user_names) IS DISTINCT FROM n
       OR cardinality(reserves) IS DISTINCT FROM n OR cardinality(estimated_inputs) IS DISTINCT FROM n
       OR cardinality(endpoints) IS DISTINCT FROM n OR cardinality(models) IS DISTINCT FROM n
       OR cardinality(streams) IS DISTINCT FROM n THEN
        RAISE EXCEPTION 'admit_batch_fast: the arrays differ in length' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- A batch of one, what a lightly loaded worker sends and its client waits on: a few
    -- single-row statements, whose plans cost little to start. The usual case only (a platform
    -- caller whose key was marked used within the minute, on a known worker, fitting in their
    -- quota); anything else is decided by admit_batch.
    IF n = 1 THEN
        SELECT k.id, u.id, q.tokens, q.period,
               u.disabled_at IS NULL AND (k.id IS NULL OR k.revoked_at IS NULL)
               AND (k.id IS NULL OR k.last_used_at >= now() - interval '1 minute')
               AND NOT EXISTS (SELECT 1 FROM byok_keys b WHERE b.user_id = u.id)
               AND EXISTS (SELECT 1 FROM workers w WHERE w.worker_id = admit_batch_fast.worker_id)
            INTO caller_key, caller_user, caller_quota, caller_period, caller_usable
            FROM users u
            LEFT JOIN api_keys k ON k.key_hash = key_hashes[1] AND k.user_id = u.id
            LEFT JOIN quotas q ON q.user_id = u.id
            WHERE CASE WHEN key_hashes[1] IS NULL THEN u.name = user_names[1]
                       ELSE u.id = (SELECT l.user_id FROM api_keys l WHERE l.key_hash = key_hashes[1]) END;
        IF caller_usable THEN
            caller_hold := greatest(coalesce(reserves[1], 0), 0);
            IF caller_quota IS NOT NULL THEN
                caller_start := period_start_of(caller_period, now());
                -- No row: no counter yet, or the request does not fit; admit_batch decides.
                UPDATE usage_counters c SET reserved_tokens = c.reserved_tokens + caller_hold
                    WHERE c.user_id = caller_user AND c.period_start = caller_start
                      AND c.used_tokens + c.reserved_tokens + caller_hold <= caller_quota
                    RETURNING c.used_tokens, c.reserved_tokens INTO counter_used, counter_reserved;
            END IF;
            IF caller_quota IS NULL OR counter_used IS NOT NULL THEN
                INSERT INTO reservations (request_id, user_id, key_id, tokens, period_start, worker_id,
                                          endpoint, model, stream, estimated_input_tokens)
                VALUES (request_ids[1], caller_user, caller_key,
                        CASE WHEN caller_quota IS NOT NULL THEN caller_hold ELSE 0 END, caller_start,
                        admit_batch_fast.worker_id, endpoints[1], models[1], streams[1],
                        greatest(coalesce(estimated_inputs[1], 0), 0));
                RETURN QUERY SELECT 1, 'admitted'::text, caller_user, caller_key, NULL::text, caller_quota,
                                    counter_used, counter_reserved, period_end_of(caller_period, caller_start);
                RETURN;
            END IF;
        END IF;
        RETURN QUERY SELECT * FROM admit_batch(request_ids, key_hashes, user_names, reserves, estimated_inputs,
                                               endpoints, models, streams, admit_batch_fast.worker_id,
                                               admit_batch_fast.secret);
        RETURN;
    END IF;

    -- All or nothing: either every request is answered here, or nothing is written or locked but
    -- counter rows that admit_batch locks again, in the same order, right after.
    RETURN QUERY
    WITH asked AS MATERIALIZED (
        SELECT c.ordinal, c.outcome, c.user_id, c.key_id, c.byok_key, c.key_used_at, q.tokens AS quota, q.period,
               CASE WHEN q.user_id IS NOT NULL THEN period_start_of(q.period, now()) END AS start,
               c.outcome = 'admitted' AND c.byok_key IS NULL AS platform,
               greatest(coalesce(a.reserve, 0), 0) AS hold,
               a.request_id, a.estimated, a.endpoint, a.model, a.stream
        FROM callers(key_hashes, user_names, admit_batch_fast.secret) c
        JOIN unnest(request_ids, reserves, estimated_inputs, endpoints, models, streams) WITH ORDINALITY
             AS a(request_id, reserve, estimated, endpoint, model, stream, n) ON a.n = c.ordinal
        LEFT JOIN quotas q ON q.user_id = c.user_id AND c.outcome = 'admitted' AND c.byok_key IS NULL
    ), wanted AS MATERIALIZED (
        -- Per counter row: what the batch's requests would hold against it together.
        SELECT r.user_id, r.start, sum(r.hold)::bigint AS total, min(r.quota) AS quota
        FROM asked r WHERE r.platform AND r.start IS NOT NULL
        GROUP BY r.user_id, r.start
    ), ready AS MATERIALIZED (
        SELECT NOT EXISTS (SELECT 1 FROM asked r
                           WHERE r.key_id IS NOT NULL
                             AND (r.key_used_at IS NULL OR r.key_used_at < now() - interval '1 minute'))
               AND (NOT EXISTS (SELECT 1 FROM asked r WHERE r.platform)
                    OR EXISTS (SELECT 1 FROM workers w WHERE w.worker_id = admit_batch_fast.worker_id))
               AND NOT EXISTS (SELECT 1 FROM wanted x
                               WHERE NOT EXISTS (SELECT 1 FROM usage_counters c
                                                 WHERE c.user_id = x.user_id AND c.period_start = x.start))
               AS ok
    ), locked AS MATERIALIZED (
        SELECT c.user_id, c.period_start, c.used_tokens, c.reserved_tokens
        FROM usage_counters c
        WHERE (SELECT ok FROM ready)
          AND (c.user_id, c.period_start) IN (SELECT x.user_id, x.start FROM wanted x)
        ORDER BY c.user_id, c.period_start FOR NO KEY UPDATE OF c
    ), fits AS MATERIALIZED (
        SELECT (SELECT ok FROM ready)
               AND NOT EXISTS (SELECT 1 FROM wanted x
                               LEFT JOIN locked l ON l.user_id = x.user_id AND l.period_start = x.start
                               WHERE l.user_id IS NULL OR l.used_tokens + l.reserved_tokens + x.total > x.quota)
               AS ok
    ), held AS (
        UPDATE usage_counters c SET reserved_tokens = l.reserved_tokens + x.total
        FROM wanted x JOIN locked l ON l.user_id = x.user_id AND l.period_start = x.start
        WHERE (SELECT ok FROM fits) AND x.total <> 0
          AND c.user_id = x.user_id AND c.period_start = x.start
    ), recorded AS (
        INSERT INTO reservations (request_id, user_id, key_id, tokens, period_start, worker_id,
                                  endpoint, model, stream, estimated_input_tokens)
        SELECT r.request_id, r.user_id, r.key_id, CASE WHEN r.start IS NOT NULL THEN r.hold ELSE 0 END, r.start,
               admit_batch_fast.worker_id, r.endpoint, r.model, r.stream, greatest(coalesce(r.estimated, 0), 0)
        FROM asked r
        WHERE r.platform AND (SELECT ok FROM fits)
    )
    SELECT r.ordinal, r.outcome, r.user_id, r.key_id, r.byok_key, r.quota,
           CASE WHEN r.platform THEN l.used_tokens END,
           CASE WHEN r.platform THEN l.reserved_tokens
                + (sum(CASE WHEN r.platform THEN r.hold ELSE 0 END)
                       OVER (PARTITION BY r.user_id, r.start ORDER BY r.ordinal))::bigint END,
           period_end_of(r.period, r.start)
    FROM asked r
    LEFT JOIN locked l ON l.user_id = r.user_id AND l.period_start = r.start
    WHERE (SELECT ok FROM fits)
    ORDER BY r.ordinal;

    GET DIAGNOSTICS answered = ROW_COUNT;
    IF answered = 0 THEN
        RETURN QUERY SELECT * FROM admit_batch(request_ids, key_hashes, user_names, reserves, estimated_inputs,
                                                     endpoints, models, streams, admit_batch_fast.worker_id,
                                                     admit_batch_fast.secret);
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION tollgate.settle_batch(
    request_ids uuid[], user_ids bigint[], key_ids bigint[], endpoints text[], models text[], streams boolean[],
    key_sources text[], outcomes text[], http_statuses integer[], inputs bigint[], cached bigint[], outputs bigint[],
    reasoning bigint[], totals bigint[], usage_sources text[], started_ats timestamptz[],
    ttfb_ms double precision[], duration_ms double precision[])
RETURNS TABLE (ordinal integer, recorded boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = tollgate, pg_temp SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    n integer := coalesce(cardinality(request_ids), 0);
    new_ids uuid[];
    -- Per counter row (user, period) touched, in (user, period) order: tokens released and used,
    -- and whether it may have to be created.
    counter_users bigint[];
    counter_starts date[];
    counter_released bigint[];
    counter_used bigint[];
    counter_create boolean[];
    -- A batch of one whose request holds a reservation: what it held, and whether it is new.
    held_user bigint;
    held_tokens bigint;
    held_start date;
    added integer;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    IF cardinality(user_ids) IS DISTINCT FROM n OR cardinality(key_ids) IS DISTINCT FROM n
       OR cardinality(endpoints) IS DISTINCT FROM n OR cardinality(models) IS DISTINCT FROM n
       OR cardinality(streams) IS DISTINCT FROM n OR cardinality(key_sources) IS DISTINCT FROM n
       OR cardinality(outcomes) IS DISTINCT FROM n OR cardinality(http_statuses) IS DISTINCT FROM n
       OR cardinality(inputs) IS DISTINCT FROM n OR cardinality(settle_batch.cached) IS DISTINCT FROM n
       OR cardinality(outputs) IS DISTINCT FROM n OR cardinality(settle_batch.reasoning) IS DISTINCT FROM n
       OR cardinality(totals) IS DISTINCT FROM n OR cardinality(usage_sources) IS DISTINCT FROM n
       OR cardinality(started_ats) IS DISTINCT FROM n OR cardinality(settle_batch.ttfb_ms) IS DISTINCT FROM n
       OR cardinality(settle_batch.duration_ms) IS DISTINCT FROM n THEN
        RAISE EXCEPTION 'settle_batch: the arrays differ in length' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- A batch of one whose request holds a reservation (the usual case under light load): single-
    -- row statements, in the same order (the reservation, its ledger row, its counter). Without
    -- a reservation nothing has been written yet, and the statements below handle it.
    IF n = 1 THEN
        DELETE FROM reservations r WHERE r.request_id = request_ids[1]
            RETURNING r.user_id, r.tokens, r.period_start INTO held_user, held_tokens, held_start;
        IF FOUND THEN
            INSERT INTO ledger (request_id, user_id, key_id, endpoint, model, stream, key_source, outcome,
                                http_status, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens,
                                total_tokens, usage_source, started_at, ttfb_ms, duration_ms)
            VALUES (request_ids[1], user_ids[1], key_ids[1], endpoints[1], models[1], streams[1], key_sources[1],
                    outcomes[1], http_statuses[1], greatest(inputs[1], 0), greatest(settle_batch.cached[1], 0),
                    greatest(outputs[1], 0), greatest(settle_batch.reasoning[1], 0), greatest(totals[1], 0),
                    usage_sources[1], started_ats[1], settle_batch.ttfb_ms[1], greatest(settle_batch.duration_ms[1], 0))
            ON CONFLICT (request_id) DO NOTHING;
            GET DIAGNOSTICS added = ROW_COUNT;
            IF held_start IS NOT NULL THEN
                UPDATE usage_counters c
                    SET reserved_tokens = greatest(c.reserved_tokens - held_tokens, 0),
                        used_tokens = c.used_tokens + CASE WHEN added > 0 THEN greatest(totals[1], 0) ELSE 0 END
                    WHERE c.user_id = held_user AND c.period_start = held_start;
            END IF;
            RETURN QUERY SELECT 1, added > 0;
            RETURN;
        END IF;
    END IF;

    -- Reservations are locked first, in request-id order as release_worker locks them, so that a
    -- settlement racing a release of the same request waits instead of deadlocking: the ledger
    -- INSERT reads `locked` before its first row, which materializes it (and takes the locks).
    -- Then the ledger rows, first occurrence of each request id, in request-id order; and from
    -- the rows that are new, what each counter row (user, period) gets.
    WITH locked AS MATERIALIZED (
        SELECT r.request_id FROM reservations r WHERE r.request_id = ANY(request_ids)
        ORDER BY r.request_id FOR UPDATE
    ), released AS (
        DELETE FROM reservations r USING locked l WHERE r.request_id = l.request_id
        RETURNING r.request_id, r.user_id, r.tokens, r.period_start
    ), inserted AS (
        INSERT INTO ledger AS l (request_id, user_id, key_id, endpoint, model, stream, key_source, outcome,
                                 http_status, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens,
                                 total_tokens, usage_source, started_at, ttfb_ms, duration_ms)
        SELECT DISTINCT ON (s.request_id)
               s.request_id, s.user_id, s.key_id, s.endpoint, s.model, s.stream, s.key_source, s.outcome,
               s.http_status, greatest(s.input, 0), greatest(s.cached, 0), greatest(s.output, 0),
               greatest(s.reasoning, 0), greatest(s.total, 0), s.usage_source, s.started_at, s.ttfb,
               greatest(s.duration, 0)
        FROM unnest(request_ids, user_ids, key_ids, endpoints, models, streams, key_sources, outcomes, http_statuses,
                    inputs, settle_batch.cached, outputs, settle_batch.reasoning, totals, usage_sources, started_ats,
                    settle_batch.ttfb_ms, settle_batch.duration_ms) WITH ORDINALITY
             AS s(request_id, user_id, key_id, endpoint, model, stream, key_source, outcome, http_status,
                  input, cached, output, reasoning, total, usage_source, started_at, ttfb, duration, n)
        WHERE (SELECT count(*) FROM locked) >= 0
        ORDER BY s.request_id, s.n
        ON CONFLICT (request_id) DO NOTHING
        RETURNING l.request_id, l.user_id, l.total_tokens, l.key_source, l.started_at
    ), counted AS (
        SELECT h.user_id, h.period_start AS start, h.tokens AS released, coalesce(w.total_tokens, 0) AS used,
               false AS fresh
        FROM released h
        LEFT JOIN inserted w ON w.request_id = h.request_id
        WHERE h.period_start IS NOT NULL
        UNION ALL
        SELECT w.user_id, period_start_of(q.period, w.started_at), 0, w.total_tokens, true
        FROM inserted w JOIN quotas q ON q.user_id = w.user_id
        WHERE w.key_source = 'platform' AND NOT EXISTS (SELECT 1 FROM released h WHERE h.request_id = w.request_id)
    ), summed AS (
        SELECT x.user_id, x.start, sum(x.released)::bigint AS released, sum(x.used)::bigint AS used,
               bool_or(x.fresh) AS fresh
        FROM counted x GROUP BY x.user_id, x.start
        ORDER BY x.user_id, x.start
    )
    SELECT (SELECT array_agg(w.request_id) FROM inserted w),
           array_agg(d.user_id), array_agg(d.start), array_agg(d.released), array_agg(d.used), array_agg(d.fresh)
        INTO new_ids, counter_users, counter_starts, counter_released, counter_used, counter_create
        FROM summed d;

    IF true = ANY(counter_create) THEN
        INSERT INTO usage_counters (user_id, period_start)
            SELECT s.user_id, s.start
            FROM unnest(counter_users, counter_starts, counter_create) AS s(user_id, start, fresh)
            WHERE s.fresh ORDER BY 1, 2
            ON CONFLICT DO NOTHING;
    END IF;
    IF counter_users IS NOT NULL THEN
        UPDATE usage_counters c
            SET reserved_tokens = greatest(c.reserved_tokens - d.released, 0), used_tokens = c.used_tokens + d.used
            FROM (SELECT l.user_id, l.period_start, s.released, s.used
                  FROM usage_counters l
                  JOIN unnest(counter_users, counter_starts, counter_released, counter_used)
                       AS s(user_id, start, released, used) ON l.user_id = s.user_id AND l.period_start = s.start
                  ORDER BY l.user_id, l.period_start FOR NO KEY UPDATE OF l) d
            WHERE c.user_id = d.user_id AND c.period_start = d.period_start;
    END IF;

    -- A request id met earlier in the batch is not recorded again (array_position finds the first).
    RETURN QUERY
    SELECT s.n::integer, s.request_id = ANY(coalesce(new_ids, '{}'::uuid[]))
                         AND array_position(request_ids, s.request_id) = s.n
    FROM unnest(request_ids) WITH ORDINALITY AS s(request_id, n)
    ORDER BY s.n;
END;
$$;

REVOKE ALL ON FUNCTION
    tollgate.admit_batch_fast(uuid[], bytea[], text[], bigint[], bigint[], text[], text[], boolean[], text, text)
FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    tollgate.admit_batch_fast(uuid[], bytea[], text[], bigint[], bigint[], text[], text[], boolean[], text, text)
TO tollgate_worker;
