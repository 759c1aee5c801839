-- Admission and settlement in batches: a worker's metering thread takes every admission (or
-- every settlement) waiting and answers them all with ONE call, one round trip and one
-- transaction: `SELECT * FROM tollgate.admit_batch(...)`, `SELECT * FROM tollgate.settle_batch(...)`.
-- Requests travel as parallel arrays (element i of every array is request i); the answer has one
-- row per request with its 1-based `ordinal`, so answers line up with the questions.
--
-- Semantics are those of admit() and settle() (002, as changed by 004), request by request in
-- batch order; admit(), settle() and authenticate() become batches of one, so there is one
-- implementation of each. The work per row is set-based (one query authenticates every caller,
-- one INSERT writes every reservation or ledger row); loops run only over in-memory arrays.
--
-- Lock order. These functions take the row locks they share with each other and with
-- release_worker() (so sweep_stale_workers()) in one order, so that concurrent batches and
-- releases queue behind each other instead of deadlocking:
--   1. api_keys rows (last_used_at), by id, NO KEY UPDATE (foreign-key checks are not blocked);
--   2. reservations, by request id (settle_batch; release_worker locks a worker's the same way);
--   3. usage_counters rows, by (user_id, period_start): missing ones inserted first in that order,
--      then all of them locked in that order, each once per batch whatever its requests.
-- New ledger rows collide only on one request id: settle_batch inserts them in request-id order
-- after step 2, release_worker only for reservations it holds. admit_batch's INSERT of the
-- worker row takes no lock when the row exists.

-- pgp_sym_decrypt raises on a wrong secret; a batch must not fail for one BYOK user, so the
-- refusal becomes NULL. Not SECURITY DEFINER and not granted: only authenticate_batch calls it.
CREATE OR REPLACE FUNCTION tollgate.byok_decrypt_or_null(ciphertext bytea, secret text) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SET search_path = tollgate, pg_temp AS $$
BEGIN
    RETURN byok_decrypt(ciphertext, secret);
EXCEPTION WHEN external_routine_invocation_exception THEN
    -- "Wrong key or corrupt data": a configuration fault of the gateway, reported by the caller.
    RETURN NULL;
END;
$$;

-- Who is calling, for every request of a batch: key_hashes[i] (bearer mode) or, when it is
-- null, user_names[i] (header mode). outcome and the other columns as in authenticate(); each
-- distinct BYOK key is decrypted once per batch. Marks keys used at most once a minute.
CREATE OR REPLACE FUNCTION tollgate.authenticate_batch(key_hashes bytea[], user_names text[], secret text)
RETURNS TABLE (ordinal integer, outcome text, user_id bigint, key_id bigint, byok_key text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = tollgate, pg_temp AS $$
#variable_conflict use_column
DECLARE
    has_secret boolean := coalesce(authenticate_batch.secret, '') <> '';
BEGIN
    IF cardinality(key_hashes) IS DISTINCT FROM cardinality(user_names) THEN
        RAISE EXCEPTION 'authenticate_batch: the arrays differ in length' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- The rows are locked first, in id order, so that two batches marking the same keys queue
    -- instead of deadlocking; NO KEY UPDATE does not block the foreign-key checks of admissions.
    PERFORM 1 FROM api_keys k
        WHERE k.key_hash = ANY(key_hashes) AND k.revoked_at IS NULL
          AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute')
        ORDER BY k.id FOR NO KEY UPDATE;
    UPDATE api_keys k SET last_used_at = now()
        WHERE k.key_hash = ANY(key_hashes) AND k.revoked_at IS NULL
          AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute')
          AND EXISTS (SELECT 1 FROM users u WHERE u.id = k.user_id AND u.disabled_at IS NULL);

    RETURN QUERY
    WITH asked AS (
        SELECT a.n::integer AS n, a.key_hash, a.user_name
        FROM unnest(key_hashes, user_names) WITH ORDINALITY AS a(key_hash, user_name, n)
    ), checked AS (
        SELECT a.n, k.id AS key_id, coalesce(ku.id, nu.id) AS user_id,
               CASE WHEN a.key_hash IS NOT NULL AND k.id IS NULL THEN 'unknown_key'
                    WHEN k.revoked_at IS NOT NULL THEN 'revoked_key'
                    WHEN coalesce(ku.id, nu.id) IS NULL THEN 'unknown_user'
                    WHEN coalesce(ku.disabled_at, nu.disabled_at) IS NOT NULL THEN 'disabled_user'
               END AS refusal
        FROM asked a
        LEFT JOIN api_keys k ON k.key_hash = a.key_hash
        LEFT JOIN users ku ON ku.id = k.user_id
        LEFT JOIN users nu ON a.key_hash IS NULL AND nu.name = a.user_name
    ), byok AS MATERIALIZED (
        SELECT b.user_id, CASE WHEN has_secret THEN byok_decrypt_or_null(b.ciphertext, authenticate_batch.secret) END
                              AS plain
        FROM byok_keys b
        WHERE b.user_id IN (SELECT c.user_id FROM checked c WHERE c.refusal IS NULL)
    )
    SELECT c.n,
           CASE WHEN c.refusal IS NOT NULL THEN c.refusal
                WHEN b.user_id IS NULL THEN 'admitted'
                WHEN NOT has_secret THEN 'byok_secret_missing'
                WHEN b.plain IS NULL THEN 'byok_secret_invalid'
                ELSE 'admitted'
           END,
           c.user_id,
           c.key_id,
           CASE WHEN c.refusal IS NULL THEN b.plain END
    FROM checked c
    LEFT JOIN byok b ON b.user_id = c.user_id AND c.refusal IS NULL
    ORDER BY c.n;
END;
$$;

-- Authenticates every request, then holds reserves[i] tokens against each platform caller's
-- quota: BYOK users are not limited and get no reservation; a user without a quota gets a
-- reservation of 0 tokens (so that a lost worker's request still reaches the ledger); a user with
-- a quota gets one only while used + reserved + reserve <= quota. Requests of one user are decided
-- in batch order, each seeing what the admitted ones before it reserved; a refused request holds
-- nothing, so a later, smaller one may still fit (exactly as the same requests admitted one by
-- one, in that order). Each counter row is locked once per batch, in (user, period) order.
-- quota, used, reserved (after this request) and period_end as in admit().
CREATE OR REPLACE FUNCTION tollgate.admit_batch(
    request_ids uuid[], key_hashes bytea[], user_names text[], reserves bigint[], estimated_inputs bigint[],
    endpoints text[], models text[], streams boolean[], worker_id text, secret text)
RETURNS TABLE (ordinal integer, outcome text, user_id bigint, key_id bigint, byok_key text,
               quota bigint, used bigint, reserved bigint, period_end timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = tollgate, pg_temp AS $$
#variable_conflict use_column
DECLARE
    n integer := coalesce(cardinality(request_ids), 0);
    outcomes text[];
    users bigint[];
    keys bigint[];
    byoks text[];
    limits bigint[];
    starts date[];
    ends timestamptz[];
    slots integer[];
    -- Per request: tokens reserved (null: no reservation row), and the standing it saw.
    holds bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    useds bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    reserveds bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    -- Per counter row (user, period) of the batch, locked: its used and reserved tokens.
    counter_users bigint[];
    counter_starts date[];
    counter_used bigint[];
    counter_reserved bigint[];
    hold bigint;
    slot integer;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(ARRAY[cardinality(key_hashes), cardinality(user_names), cardinality(reserves),
                                          cardinality(estimated_inputs), cardinality(endpoints), cardinality(models),
                                          cardinality(streams)]) AS a(length)
               WHERE a.length IS DISTINCT FROM n) THEN
        RAISE EXCEPTION 'admit_batch: the arrays differ in length' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT array_agg(a.outcome ORDER BY a.ordinal), array_agg(a.user_id ORDER BY a.ordinal),
           array_agg(a.key_id ORDER BY a.ordinal), array_agg(a.byok_key ORDER BY a.ordinal)
        INTO outcomes, users, keys, byoks
        FROM authenticate_batch(key_hashes, user_names, admit_batch.secret) a;

    -- The quota (and its current period) of every request that reaches the quota check.
    SELECT array_agg(r.quota ORDER BY r.n), array_agg(r.start ORDER BY r.n),
           array_agg(period_end_of(r.period, r.start) ORDER BY r.n)
        INTO limits, starts, ends
        FROM (SELECT a.n, q.tokens AS quota, q.period,
                     CASE WHEN q.user_id IS NOT NULL THEN period_start_of(q.period, now()) END AS start
              FROM unnest(outcomes, users, byoks) WITH ORDINALITY AS a(outcome, user_id, byok_key, n)
              LEFT JOIN quotas q ON q.user_id = a.user_id AND a.outcome = 'admitted' AND a.byok_key IS NULL) r;

    IF NOT EXISTS (SELECT 1 FROM unnest(outcomes, byoks) AS r(outcome, byok_key)
                   WHERE r.outcome = 'admitted' AND r.byok_key IS NULL) THEN
        RETURN QUERY SELECT r.n::integer, r.outcome, r.user_id, r.key_id, r.byok_key,
                            NULL::bigint, NULL::bigint, NULL::bigint, NULL::timestamptz
            FROM unnest(outcomes, users, keys, byoks) WITH ORDINALITY AS r(outcome, user_id, key_id, byok_key, n);
        RETURN;
    END IF;

    -- No lock is taken on an existing worker row, so batches never queue behind each other here.
    INSERT INTO workers (worker_id) VALUES (admit_batch.worker_id) ON CONFLICT DO NOTHING;

    INSERT INTO usage_counters (user_id, period_start)
        SELECT DISTINCT r.user_id, r.start FROM unnest(users, starts) AS r(user_id, start)
        WHERE r.start IS NOT NULL ORDER BY 1, 2
        ON CONFLICT DO NOTHING;
    SELECT array_agg(c.user_id ORDER BY c.user_id, c.period_start),
           array_agg(c.period_start ORDER BY c.user_id, c.period_start),
           array_agg(c.used_tokens ORDER BY c.user_id, c.period_start),
           array_agg(c.reserved_tokens ORDER BY c.user_id, c.period_start)
        INTO counter_users, counter_starts, counter_used, counter_reserved
        FROM (SELECT c.user_id, c.period_start, c.used_tokens, c.reserved_tokens FROM usage_counters c
              WHERE (c.user_id, c.period_start) IN (SELECT r.user_id, r.start
                                                    FROM unnest(users, starts) AS r(user_id, start))
              ORDER BY c.user_id, c.period_start FOR NO KEY UPDATE OF c) c;
    SELECT array_agg(s.slot ORDER BY r.n) INTO slots
        FROM unnest(users, starts) WITH ORDINALITY AS r(user_id, start, n)
        LEFT JOIN unnest(counter_users, counter_starts) WITH ORDINALITY AS s(user_id, start, slot)
               ON s.user_id = r.user_id AND s.start = r.start;

    FOR i IN 1..n LOOP
        CONTINUE WHEN outcomes[i] <> 'admitted' OR byoks[i] IS NOT NULL;
        hold := greatest(coalesce(reserves[i], 0), 0);
        IF limits[i] IS NULL THEN
            holds[i] := 0;
            CONTINUE;
        END IF;
        slot := slots[i];
        IF counter_used[slot] + counter_reserved[slot] + hold <= limits[i] THEN
            counter_reserved[slot] := counter_reserved[slot] + hold;
            holds[i] := hold;
        ELSE
            outcomes[i] := 'insufficient_quota';
        END IF;
        useds[i] := counter_used[slot];
        reserveds[i] := counter_reserved[slot];
    END LOOP;

    UPDATE usage_counters c SET reserved_tokens = s.reserved
        FROM unnest(counter_users, counter_starts, counter_reserved) AS s(user_id, start, reserved)
        WHERE c.user_id = s.user_id AND c.period_start = s.start AND c.reserved_tokens <> s.reserved;

    INSERT INTO reservations (request_id, user_id, key_id, tokens, period_start, worker_id,
                              endpoint, model, stream, estimated_input_tokens)
        SELECT r.request_id, r.user_id, r.key_id, r.hold, r.start, admit_batch.worker_id,
               r.endpoint, r.model, r.stream, greatest(coalesce(r.estimated, 0), 0)
        FROM unnest(request_ids, users, keys, holds, starts, endpoints, models, streams, estimated_inputs)
             AS r(request_id, user_id, key_id, hold, start, endpoint, model, stream, estimated)
        WHERE r.hold IS NOT NULL;

    RETURN QUERY SELECT r.n::integer, r.outcome, r.user_id, r.key_id, r.byok_key, r.quota, r.used, r.reserved,
                        CASE WHEN r.quota IS NOT NULL THEN r.period_end END
        FROM unnest(outcomes, users, keys, byoks, limits, useds, reserveds, ends) WITH ORDINALITY
             AS r(outcome, user_id, key_id, byok_key, quota, used, reserved, period_end, n);
END;
$$;

-- Records finished requests in the ledger and releases their reservations, as settle() does for
-- each: idempotent by request id (a request id met again, in the ledger or earlier in the same
-- batch, adds nothing); the real usage reaches the counters only with a new ledger row, in the
-- reservation's period; a platform request without a reservation counts against the quota of the
-- period containing its started_at (sql/004). recorded: whether its ledger row is new.
CREATE OR REPLACE FUNCTION tollgate.settle_batch(
    request_ids uuid[], user_ids bigint[], key_ids bigint[], endpoints text[], models text[], streams boolean[],
    key_sources text[], outcomes text[], http_statuses integer[], inputs bigint[], cached bigint[], outputs bigint[],
    reasoning bigint[], totals bigint[], usage_sources text[], started_ats timestamptz[],
    ttfb_ms double precision[], duration_ms double precision[])
RETURNS TABLE (ordinal integer, recorded boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = tollgate, pg_temp AS $$
#variable_conflict use_column
DECLARE
    n integer := coalesce(cardinality(request_ids), 0);
    held_ids uuid[];
    held_users bigint[];
    held_tokens bigint[];
    held_starts date[];
    new_ids uuid[];
    new_users bigint[];
    new_totals bigint[];
    new_sources text[];
    new_starts timestamptz[];
    -- Per counter row (user, period) touched: tokens released and used, and whether to create it.
    counter_users bigint[];
    counter_starts date[];
    counter_released bigint[];
    counter_used bigint[];
    counter_create boolean[];
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(ARRAY[cardinality(user_ids), cardinality(key_ids), cardinality(endpoints),
                                          cardinality(models), cardinality(streams), cardinality(key_sources),
                                          cardinality(outcomes), cardinality(http_statuses), cardinality(inputs),
                                          cardinality(settle_batch.cached), cardinality(outputs),
                                          cardinality(settle_batch.reasoning), cardinality(totals),
                                          cardinality(usage_sources), cardinality(started_ats),
                                          cardinality(settle_batch.ttfb_ms), cardinality(settle_batch.duration_ms)])
                   AS a(length)
               WHERE a.length IS DISTINCT FROM n) THEN
        RAISE EXCEPTION 'settle_batch: the arrays differ in length' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Reservations are locked first, in request-id order as release_worker locks them, so that a
    -- settlement racing a release of the same request waits instead of deadlocking.
    PERFORM 1 FROM reservations r WHERE r.request_id = ANY(request_ids) ORDER BY r.request_id FOR UPDATE;
    WITH released AS (
        DELETE FROM reservations r WHERE r.request_id = ANY(request_ids)
        RETURNING r.request_id, r.user_id, r.tokens, r.period_start
    )
    SELECT array_agg(d.request_id), array_agg(d.user_id), array_agg(d.tokens), array_agg(d.period_start)
        INTO held_ids, held_users, held_tokens, held_starts FROM released d;

    WITH inserted AS (
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
        ORDER BY s.request_id, s.n
        ON CONFLICT (request_id) DO NOTHING
        RETURNING l.request_id, l.user_id, l.total_tokens, l.key_source, l.started_at
    )
    SELECT array_agg(i.request_id), array_agg(i.user_id), array_agg(i.total_tokens), array_agg(i.key_source),
           array_agg(i.started_at)
        INTO new_ids, new_users, new_totals, new_sources, new_starts FROM inserted i;

    SELECT array_agg(d.user_id ORDER BY d.user_id, d.start), array_agg(d.start ORDER BY d.user_id, d.start),
           array_agg(d.released ORDER BY d.user_id, d.start), array_agg(d.used ORDER BY d.user_id, d.start),
           array_agg(d.fresh ORDER BY d.user_id, d.start)
        INTO counter_users, counter_starts, counter_released, counter_used, counter_create
        FROM (
            SELECT x.user_id, x.start, sum(x.released)::bigint AS released, sum(x.used)::bigint AS used,
                   bool_or(x.fresh) AS fresh
            FROM (
                SELECT h.user_id, h.start, h.tokens AS released, coalesce(w.total, 0) AS used, false AS fresh
                FROM unnest(held_ids, held_users, held_tokens, held_starts) AS h(request_id, user_id, tokens, start)
                LEFT JOIN unnest(new_ids, new_totals) AS w(request_id, total) ON w.request_id = h.request_id
                WHERE h.start IS NOT NULL
                UNION ALL
                SELECT w.user_id, period_start_of(q.period, w.started_at), 0, w.total, true
                FROM unnest(new_ids, new_users, new_totals, new_sources, new_starts)
                     AS w(request_id, user_id, total, key_source, started_at)
                JOIN quotas q ON q.user_id = w.user_id
                WHERE w.key_source = 'platform' AND NOT (w.request_id = ANY(coalesce(held_ids, '{}'::uuid[])))
            ) x
            GROUP BY x.user_id, x.start
        ) d;

    IF counter_users IS NOT NULL THEN
        INSERT INTO usage_counters (user_id, period_start)
            SELECT s.user_id, s.start
            FROM unnest(counter_users, counter_starts, counter_create) AS s(user_id, start, fresh)
            WHERE s.fresh ORDER BY 1, 2
            ON CONFLICT DO NOTHING;
        PERFORM 1 FROM usage_counters c
            WHERE (c.user_id, c.period_start) IN (SELECT s.user_id, s.start FROM unnest(counter_users, counter_starts)
                                                  AS s(user_id, start))
            ORDER BY c.user_id, c.period_start FOR NO KEY UPDATE;
        UPDATE usage_counters c
            SET reserved_tokens = greatest(c.reserved_tokens - s.released, 0), used_tokens = c.used_tokens + s.used
            FROM unnest(counter_users, counter_starts, counter_released, counter_used)
                 AS s(user_id, start, released, used)
            WHERE c.user_id = s.user_id AND c.period_start = s.start;
    END IF;

    RETURN QUERY
    SELECT r.n::integer, r.first AND r.request_id = ANY(coalesce(new_ids, '{}'::uuid[]))
    FROM (SELECT a.request_id, a.n, row_number() OVER (PARTITION BY a.request_id ORDER BY a.n) = 1 AS first
          FROM unnest(request_ids) WITH ORDINALITY AS a(request_id, n)) r
    ORDER BY r.n;
END;
$$;

-- The per-request functions of 002 and 004 become batches of one: same signatures, owners and
-- grants, one implementation of the semantics.
CREATE OR REPLACE FUNCTION tollgate.authenticate(
    key_hash bytea, user_name text, secret text,
    OUT outcome text, OUT user_id bigint, OUT key_id bigint, OUT byok_key text)
LANGUAGE sql SECURITY DEFINER SET search_path = tollgate, pg_temp AS $$
    SELECT a.outcome, a.user_id, a.key_id, a.byok_key
    FROM tollgate.authenticate_batch(ARRAY[key_hash], ARRAY[user_name], secret) a
$$;

CREATE OR REPLACE FUNCTION tollgate.admit(
    request_id uuid, key_hash bytea, user_name text, reserve bigint, estimated_input bigint,
    endpoint text, model text, stream boolean, worker_id text, secret text,
    OUT outcome text, OUT user_id bigint, OUT key_id bigint, OUT byok_key text,
    OUT quota bigint, OUT used bigint, OUT reserved bigint, OUT period_end timestamptz)
LANGUAGE sql SECURITY DEFINER SET search_path = tollgate, pg_temp AS $$
    SELECT a.outcome, a.user_id, a.key_id, a.byok_key, a.quota, a.used, a.reserved, a.period_end
    FROM tollgate.admit_batch(ARRAY[request_id], ARRAY[key_hash], ARRAY[user_name], ARRAY[reserve],
                              ARRAY[estimated_input], ARRAY[endpoint], ARRAY[model], ARRAY[stream], worker_id, secret) a
$$;

CREATE OR REPLACE FUNCTION tollgate.settle(
    request_id uuid, user_id bigint, key_id bigint, endpoint text, model text, stream boolean,
    key_source text, outcome text, http_status integer, input bigint, cached bigint, output bigint,
    reasoning bigint, total bigint, usage_source text, started_at timestamptz, ttfb_ms double precision,
    duration_ms double precision)
RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = tollgate, pg_temp AS $$
    SELECT s.recorded
    FROM tollgate.settle_batch(ARRAY[request_id], ARRAY[user_id], ARRAY[key_id], ARRAY[endpoint], ARRAY[model],
                               ARRAY[stream], ARRAY[key_source], ARRAY[outcome], ARRAY[http_status], ARRAY[input],
                               ARRAY[cached], ARRAY[output], ARRAY[reasoning], ARRAY[total], ARRAY[usage_source],
                               ARRAY[started_at], ARRAY[ttfb_ms], ARRAY[duration_ms]) s
$$;

REVOKE ALL ON FUNCTION
    tollgate.byok_decrypt_or_null(bytea, text),
    tollgate.authenticate_batch(bytea[], text[], text),
    tollgate.admit_batch(uuid[], bytea[], text[], bigint[], bigint[], text[], text[], boolean[], text, text),
    tollgate.settle_batch(uuid[], bigint[], bigint[], text[], text[], boolean[], text[], text[], integer[], bigint[],
                          bigint[], bigint[], bigint[], bigint[], text[], timestamptz[], double precision[],
                          double precision[])
FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    tollgate.authenticate_batch(bytea[], text[], text),
    tollgate.admit_batch(uuid[], bytea[], text[], bigint[], bigint[], text[], text[], boolean[], text, text),
    tollgate.settle_batch(uuid[], bigint[], bigint[], text[], text[], boolean[], text[], text[], integer[], bigint[],
                          bigint[], bigint[], bigint[], bigint[], text[], timestamptz[], double precision[],
                          double precision[])
TO tollgate_worker;
