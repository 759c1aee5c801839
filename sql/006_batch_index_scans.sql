-- The batch functions look up a handful of rows by key in tables that churn: a reservation is
-- inserted and deleted for every request, a counter row is rewritten by every batch. Their
-- plans are generic (planned once per session, see 005) and the planner, seeing tables of a few
-- dozen live rows, chose sequential scans and hash joins, which under load read every page of
-- dead row versions between vacuums: most of PostgreSQL's time at 64 connections went there.
-- Index scans cost the same whether a table holds ten rows or ten million, or is full of dead
-- versions; the batch functions now plan with sequential scans ruled out. Idempotent: ALTER
-- FUNCTION ... SET replaces the setting.

ALTER FUNCTION tollgate.authenticate_batch(bytea[], text[], text) SET enable_seqscan = off;

ALTER FUNCTION tollgate.admit_batch(uuid[], bytea[], text[], bigint[], bigint[], text[], text[], boolean[], text, text)
    SET enable_seqscan = off;

ALTER FUNCTION tollgate.settle_batch(uuid[], bigint[], bigint[], text[], text[], boolean[], text[], text[], integer[],
                                     bigint[], bigint[], bigint[], bigint[], bigint[], text[], timestamptz[],
                                     double precision[], double precision[])
    SET enable_seqscan = off;
