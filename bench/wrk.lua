-- wrk script of scripts/bench.py: POSTs a JSON body and prints one machine-readable line.
--
-- Environment (never argv, which `ps` shows):
--   BENCH_BODY      file holding the request body (required)
--   BENCH_AUTH      value of the Authorization header (optional)
--   BENCH_ACCEPT    value of the Accept header (optional)
--   BENCH_DELAY_MS  pause before each request on a connection, in ms (optional: a paced
--                   probe that keeps its latency figures without loading the machine)
-- Output: a line `BENCH_JSON {...}` with requests, duration, errors by kind and latency
-- percentiles in microseconds.

local path = os.getenv("BENCH_BODY")
local file = assert(io.open(path, "rb"), "BENCH_BODY: cannot open " .. tostring(path))
wrk.body = file:read("*a")
file:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
    wrk.headers["Authorization"] = auth
end
local accept = os.getenv("BENCH_ACCEPT")
if accept and accept ~= "" then
    wrk.headers["Accept"] = accept
end

local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0") or 0
if pause > 0 then
    function delay()
        return pause
    end
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
        '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
        '"latency_us":{"p50":%.1f,"p90":%.1f,"p99":%.1f,"max":%.1f,"mean":%.1f}}\n',
        summary.requests, summary.duration, summary.bytes,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
