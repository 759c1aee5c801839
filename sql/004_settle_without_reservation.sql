-- Settlements of requests that were admitted without a reservation still count against the
-- quota. The outage policy `allow` admits known callers while the database is down, so their
-- requests have no reservation row; their settlements reach settle() later (directly, or
-- replayed from a worker's journal). When settle() inserts a new ledger row for a platform
-- request and finds no reservation, it now adds the usage to the user's counter of the quota
-- period that contains started_at (creating the counter when missing). A user without a quota
-- has no counter: the ledger row is all there is, as before. Nothing changes for requests with
-- a reservation, for BYOK requests, or for a settlement whose request is in the ledger already
-- (a retry or a replay adds nothing).
--
-- Same signature as in 002_functions.sql: CREATE OR REPLACE keeps the function's owner and its
-- privileges (EXECUTE for tollgate_worker only), and callers need no change.
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
    was_held boolean;
    inserted integer;
    quota_period text;
BEGIN
    -- The reservation row is locked first (by deleting it), as release_worker does, so that a
    -- settlement racing a release of the same request waits instead of deadlocking.
    DELETE FROM reservations r WHERE r.request_id = settle.request_id
        RETURNING r.user_id, r.tokens, r.period_start INTO held_user, held_tokens, held_start;
    was_held := FOUND;

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
    ELSIF NOT was_held AND inserted > 0 AND settle.key_source = 'platform' THEN
        SELECT q.period INTO quota_period FROM quotas q WHERE q.user_id = settle.user_id;
        IF FOUND THEN
            INSERT INTO usage_counters AS c (user_id, period_start, used_tokens)
            VALUES (settle.user_id, period_start_of(quota_period, settle.started_at), greatest(settle.total, 0))
            ON CONFLICT (user_id, period_start) DO UPDATE SET used_tokens = c.used_tokens + excluded.used_tokens;
        END IF;
    END IF;
    RETURN inserted > 0;
END;
$$;
