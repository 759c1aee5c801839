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

-- Every function a worker calls here plans its statements once per session (generic plans):
-- the batch size varies with every call, and re-planning a dozen statements for each would cost
-- more than running them. They plan without sequential scans: they look up a handful of rows by
-- key in tables that churn (a reservation is written and deleted for every request, a counter
-- row rewritten by every batch), and a generic plan that believed those tables small scanned
-- every page of dead row versions between vacuums; an index scan costs the same at any size.

-- Reservations are bookkeeping of requests in flight, written and deleted only by the functions
-- below with the user and key they have just looked up in the same transaction. Their foreign
-- keys checked nothing those lookups had not, and cost two trigger queries per request, each
-- share-locking the user's and the key's row: under concurrency, every admission of a user
-- shared one lock with every other, which PostgreSQL tracks as a multixact per row. The ledger
-- keeps its foreign keys: it is the record DBAs join against.
ALTER TABLE tollgate.reservations DROP CONSTRAINT IF EXISTS reservations_user_id_fkey;
ALTER TABLE tollgate.reservations DROP CONSTRAINT IF EXISTS reservations_key_id_fkey;

-- pgp_sym_decrypt raises on a wrong secret; a batch must not fail for one BYOK user, so the
-- refusal becomes NULL. STABLE like pgp_sym_decrypt (immutable), so that callers() inlines.
CREATE OR REPLACE FUNCTION tollgate.byok_decrypt_or_null(ciphertext bytea, secret text) RETURNS text
LANGUAGE plpgsql STABLE STRICT SET search_path = tollgate, pg_temp AS $$
BEGIN
    RETURN byok_decrypt(ciphertext, secret);
EXCEPTION WHEN external_routine_invocation_exception THEN
    -- "Wrong key or corrupt data": a configuration fault of the gateway, reported by the caller.
    RETURN NULL;
END;
$$;

-- Who is calling, for every request of a batch, without side effects: key_hashes[i] (bearer
-- mode) or, when it is null, user_names[i] (header mode). Columns as authenticate() answers
-- them, plus when the key was last marked used; each BYOK key is decrypted once per batch. Plain SQL, so that it is inlined into the
-- query that calls it; names are qualified because it runs with the caller's search_path.
CREATE OR REPLACE FUNCTION tollgate.callers(key_hashes bytea[], user_names text[], secret text)
RETURNS TABLE (ordinal integer, outcome text, user_id bigint, key_id bigint, byok_key text, key_used_at timestamptz)
LANGUAGE sql STABLE AS $$
    WITH checked AS (
        SELECT a.n::integer AS n, k.id AS key_id, k.last_used_at, coalesce(ku.id, nu.id) AS user_id, b.ciphertext,
               CASE WHEN a.key_hash IS NOT NULL AND k.id IS NULL THEN 'unknown_key'
                    WHEN k.revoked_at IS NOT NULL THEN 'revoked_key'
                    WHEN coalesce(ku.id, nu.id) IS NULL THEN 'unknown_user'
                    WHEN coalesce(ku.disabled_at, nu.disabled_at) IS NOT NULL THEN 'disabled_user'
               END AS refusal
        FROM unnest(key_hashes, user_names) WITH ORDINALITY AS a(key_hash, user_name, n)
        LEFT JOIN tollgate.api_keys k ON k.key_hash = a.key_hash
        LEFT JOIN tollgate.users ku ON ku.id = k.user_id
        LEFT JOIN tollgate.users nu ON a.key_hash IS NULL AND nu.name = a.user_name
        LEFT JOIN tollgate.byok_keys b ON b.user_id = coalesce(ku.id, nu.id)
    ), byok AS MATERIALIZED (
        SELECT DISTINCT c.user_id, tollgate.byok_decrypt_or_null(c.ciphertext, secret) AS plain
        FROM checked c WHERE c.refusal IS NULL AND c.ciphertext IS NOT NULL AND coalesce(secret, '') <> ''
    )
    SELECT c.n,
           CASE WHEN c.refusal IS NOT NULL THEN c.refusal
                WHEN c.ciphertext IS NULL THEN 'admitted'
                WHEN coalesce(secret, '') = '' THEN 'byok_secret_missing'
                WHEN b.plain IS NULL THEN 'byok_secret_invalid'
                ELSE 'admitted'
           END,
           c.user_id, c.key_id, CASE WHEN c.refusal IS NULL THEN b.plain END, c.last_used_at
    FROM checked c LEFT JOIN byok b ON b.user_id = c.user_id
$$;

-- Marks the keys of a batch used (last_used_at), at most once a minute, when neither the key is
-- revoked nor its user disabled. The rows are locked first in id order, so that two batches
-- marking the same keys queue instead of deadlocking; NO KEY UPDATE does not block the
-- foreign-key checks of admissions. Called only by the definer functions below, inside their
-- settings (search_path, generic plans); names are qualified all the same.
CREATE OR REPLACE FUNCTION tollgate.mark_keys_used(key_hashes bytea[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tollgate.api_keys k SET last_used_at = now()
    FROM (SELECT l.id FROM tollgate.api_keys l JOIN tollgate.users u ON u.id = l.user_id
          WHERE l.key_hash = ANY(key_hashes) AND l.revoked_at IS NULL AND u.disabled_at IS NULL
            AND (l.last_used_at IS NULL OR l.last_used_at < now() - interval '1 minute')
          ORDER BY l.id FOR NO KEY UPDATE OF l) l
    WHERE k.id = l.id;
END;
$$;

-- Who is calling, for every request of a batch (callers()), marking their keys used: outcome is
-- 'admitted', 'unknown_key', 'revoked_key', 'unknown_user', 'disabled_user',
-- 'byok_secret_missing' or 'byok_secret_invalid'; byok_key is the decrypted BYOK key of a BYOK
-- user, null otherwise.
CREATE OR REPLACE FUNCTION tollgate.authenticate_batch(key_hashes bytea[], user_names text[], secret text)
RETURNS TABLE (ordinal integer, outcome text, user_id bigint, key_id bigint, byok_key text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = tollgate, pg_temp SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
BEGIN
    IF cardinality(key_hashes) IS DISTINCT FROM cardinality(user_names) THEN
        RAISE EXCEPTION 'authenticate_batch: the arrays differ in length' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM mark_keys_used(key_hashes);
    RETURN QUERY SELECT c.ordinal, c.outcome, c.user_id, c.key_id, c.byok_key
        FROM callers(key_hashes, user_names, authenticate_batch.secret) c ORDER BY c.ordinal;
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
LANGUAGE plpgsql SECURITY DEFINER SET search_path = tollgate, pg_temp SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    n integer := coalesce(cardinality(request_ids), 0);
    -- Per request.
    outcomes text[];
    users bigint[];
    keys bigint[];
    byoks text[];
    limits bigint[];
    starts date[];
    ends timestamptz[];
    -- Which counter row (an index into counter_*) a request with a quota counts against.
    slots integer[];
    -- Tokens reserved (null: no reservation row), and the standing the request saw.
    holds bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    useds bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    reserveds bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    platform boolean;
    -- Whether a key of the batch was last marked used over a minute ago, and how many counter
    -- rows the batch needs.
    stale_keys boolean;
    counter_slots integer;
    -- Whether a counter row of the batch, or this worker's row, has to be created first.
    missing_rows boolean;
    -- Per counter row (user, period) of the batch, locked, in (user, period) order.
    counter_users bigint[];
    counter_starts date[];
    counter_used bigint[];
    counter_reserved bigint[];
    hold bigint;
    slot integer;
BEGIN
    -- A client waits on every admission: its commit does not wait for the WAL to reach disk.
    -- Should PostgreSQL crash before it does, the reservation and its counter change are lost
    -- together, consistently; the request's settlement, always committed synchronously, then
    -- finds no reservation and counts the usage by itself (sql/004). Lasts to the end of the
    -- caller's transaction: call this in a transaction of its own, as the workers do.
    -- Limitation: until those requests settle, their tokens are not held against the quota.
    SET LOCAL synchronous_commit = off;
    IF n = 0 THEN
        RETURN;
    END IF;
    IF cardinality(key_hashes) IS DISTINCT FROM n OR cardinality(user_names) IS DISTINCT FROM n
       OR cardinality(reserves) IS DISTINCT FROM n OR cardinality(estimated_inputs) IS DISTINCT FROM n
       OR cardinality(endpoints) IS DISTINCT FROM n OR cardinality(models) IS DISTINCT FROM n
       OR cardinality(streams) IS DISTINCT FROM n THEN
        RAISE EXCEPTION 'admit_batch: the arrays differ in length' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Each caller, and for a platform caller with a quota: the quota, its current period, and the
    -- rank of its (user, period) among those of the batch, which is its counter row's slot.
    SELECT array_agg(r.outcome ORDER BY r.ordinal), array_agg(r.user_id ORDER BY r.ordinal),
           array_agg(r.key_id ORDER BY r.ordinal), array_agg(r.byok_key ORDER BY r.ordinal),
           array_agg(r.quota ORDER BY r.ordinal), array_agg(r.start ORDER BY r.ordinal),
           array_agg(period_end_of(r.period, r.start) ORDER BY r.ordinal),
           array_agg(CASE WHEN r.start IS NOT NULL THEN r.slot END ORDER BY r.ordinal),
           bool_or(r.outcome = 'admitted' AND r.byok_key IS NULL),
           bool_or(r.key_id IS NOT NULL AND (r.key_used_at IS NULL OR r.key_used_at < now() - interval '1 minute')),
           coalesce(max(CASE WHEN r.start IS NOT NULL THEN r.slot END), 0),
           bool_or(r.start IS NOT NULL AND NOT EXISTS (
                       SELECT 1 FROM usage_counters c WHERE c.user_id = r.user_id AND c.period_start = r.start))
               OR NOT EXISTS (SELECT 1 FROM workers w WHERE w.worker_id = admit_batch.worker_id)
        INTO outcomes, users, keys, byoks, limits, starts, ends, slots, platform, stale_keys, counter_slots,
             missing_rows
        FROM (SELECT c.*, q.tokens AS quota, q.period, s.start,
                     dense_rank() OVER (ORDER BY s.start IS NULL, c.user_id, s.start)::integer AS slot
              FROM callers(key_hashes, user_names, admit_batch.secret) c
              LEFT JOIN quotas q ON q.user_id = c.user_id AND c.outcome = 'admitted' AND c.byok_key IS NULL
              CROSS JOIN LATERAL (SELECT CASE WHEN q.user_id IS NOT NULL THEN period_start_of(q.period, now()) END
                                         AS start) s) r;

    -- Marking keys used writes (and locks) their rows: only when one is due, about once a minute
    -- per key, and before the counter rows are locked, as the lock order wants.
    IF stale_keys THEN
        PERFORM mark_keys_used(key_hashes);
    END IF;

    -- Counter rows are never deleted: once seen, they exist. So the first batch of a user's
    -- period, or of a worker, creates what is missing (taking no lock on what exists), and the
    -- others skip this statement.
    IF platform AND missing_rows THEN
        WITH worker AS (
            INSERT INTO workers (worker_id) VALUES (admit_batch.worker_id) ON CONFLICT DO NOTHING
        )
        INSERT INTO usage_counters (user_id, period_start)
            SELECT DISTINCT r.user_id, r.start FROM unnest(users, starts) AS r(user_id, start)
            WHERE r.start IS NOT NULL ORDER BY 1, 2
            ON CONFLICT DO NOTHING;
    END IF;

    IF platform THEN
        SELECT array_agg(c.user_id ORDER BY c.user_id, c.period_start),
               array_agg(c.period_start ORDER BY c.user_id, c.period_start),
               array_agg(c.used_tokens ORDER BY c.user_id, c.period_start),
               array_agg(c.reserved_tokens ORDER BY c.user_id, c.period_start)
            INTO counter_users, counter_starts, counter_used, counter_reserved
            FROM (SELECT c.user_id, c.period_start, c.used_tokens, c.reserved_tokens FROM usage_counters c
                  WHERE (c.user_id, c.period_start) IN (SELECT r.user_id, r.start
                                                        FROM unnest(users, starts) AS r(user_id, start))
                  ORDER BY c.user_id, c.period_start FOR NO KEY UPDATE OF c) c;
        IF coalesce(cardinality(counter_users), 0) <> counter_slots THEN
            RAISE EXCEPTION 'admit_batch: a counter row is missing' USING ERRCODE = 'internal_error';
        END IF;
    END IF;

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

    IF platform THEN
        -- The counter rows are locked already: the order of these two writes does not matter.
        WITH held AS (
            UPDATE usage_counters c SET reserved_tokens = s.reserved
            FROM unnest(counter_users, counter_starts, counter_reserved) AS s(user_id, start, reserved)
            WHERE c.user_id = s.user_id AND c.period_start = s.start AND c.reserved_tokens <> s.reserved
        )
        INSERT INTO reservations (request_id, user_id, key_id, tokens, period_start, worker_id,
                                  endpoint, model, stream, estimated_input_tokens)
            SELECT r.request_id, r.user_id, r.key_id, r.hold, r.start, admit_batch.worker_id,
                   r.endpoint, r.model, r.stream, greatest(coalesce(r.estimated, 0), 0)
            FROM unnest(request_ids, users, keys, holds, starts, endpoints, models, streams, estimated_inputs)
                 AS r(request_id, user_id, key_id, hold, start, endpoint, model, stream, estimated)
            WHERE r.hold IS NOT NULL;
    END IF;

    FOR i IN 1..n LOOP
        ordinal := i;
        outcome := outcomes[i];
        user_id := users[i];
        key_id := keys[i];
        byok_key := byoks[i];
        quota := limits[i];
        used := useds[i];
        reserved := reserveds[i];
        period_end := ends[i];
        RETURN NEXT;
    END LOOP;
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
LANGUAGE plpgsql SECURITY DEFINER SET search_path = tollgate, pg_temp SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    n integer := coalesce(cardinality(request_ids), 0);
    held_ids uuid[];
    held_users bigint[];
    held_tokens bigint[];
    held_starts date[];
    new_ids uuid[];
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

    -- Reservations are locked first, in request-id order as release_worker locks them, so that a
    -- settlement racing a release of the same request waits instead of deadlocking.
    WITH locked AS MATERIALIZED (
        SELECT r.request_id FROM reservations r WHERE r.request_id = ANY(request_ids)
        ORDER BY r.request_id FOR UPDATE
    ), released AS (
        DELETE FROM reservations r USING locked l WHERE r.request_id = l.request_id
        RETURNING r.request_id, r.user_id, r.tokens, r.period_start
    )
    SELECT array_agg(d.request_id), array_agg(d.user_id), array_agg(d.tokens), array_agg(d.period_start)
        INTO held_ids, held_users, held_tokens, held_starts FROM released d;

    -- The ledger rows, first occurrence of each request id, in request-id order; then, from the
    -- rows that are new, what each counter row (user, period) gets.
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
    ), counted AS (
        SELECT h.user_id, h.start, h.tokens AS released, coalesce(w.total_tokens, 0) AS used, false AS fresh
        FROM unnest(held_ids, held_users, held_tokens, held_starts) AS h(request_id, user_id, tokens, start)
        LEFT JOIN inserted w ON w.request_id = h.request_id
        WHERE h.start IS NOT NULL
        UNION ALL
        SELECT w.user_id, period_start_of(q.period, w.started_at), 0, w.total_tokens, true
        FROM inserted w JOIN quotas q ON q.user_id = w.user_id
        WHERE w.key_source = 'platform' AND NOT (w.request_id = ANY(coalesce(held_ids, '{}'::uuid[])))
    ), summed AS (
        SELECT x.user_id, x.start, sum(x.released)::bigint AS released, sum(x.used)::bigint AS used,
               bool_or(x.fresh) AS fresh
        FROM counted x GROUP BY x.user_id, x.start
    )
    SELECT (SELECT array_agg(w.request_id) FROM inserted w),
           array_agg(d.user_id ORDER BY d.user_id, d.start), array_agg(d.start ORDER BY d.user_id, d.start),
           array_agg(d.released ORDER BY d.user_id, d.start), array_agg(d.used ORDER BY d.user_id, d.start),
           array_agg(d.fresh ORDER BY d.user_id, d.start)
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
    FOR i IN 1..n LOOP
        ordinal := i;
        recorded := request_ids[i] = ANY(coalesce(new_ids, '{}'::uuid[]))
                    AND array_position(request_ids, request_ids[i]) = i;
        RETURN NEXT;
    END LOOP;
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
    tollgate.callers(bytea[], text[], text),
    tollgate.mark_keys_used(bytea[]),
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
