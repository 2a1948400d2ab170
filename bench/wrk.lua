-- wrk script for bench/run.sh. Configured through the environment so one script serves
-- every workload:
--   BENCH_TOKEN      the JOB-TOKEN sent with every request (empty: no token)
--   BENCH_TOKENS     N > 1: rotate through N distinct tokens BENCH_TOKEN_PREFIX0..N-1
--   BENCH_DELAY_MS   pause per connection between requests (the paced workload)
--   BENCH_CLOSE      1: send `Connection: close` (connection churn)
-- done() prints one JSON line that run.sh parses.

local token = os.getenv("BENCH_TOKEN") or ""
local rotate = tonumber(os.getenv("BENCH_TOKENS") or "0") or 0
local prefix = os.getenv("BENCH_TOKEN_PREFIX") or ""
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0") or 0

if token ~= "" then
  wrk.headers["JOB-TOKEN"] = token
end
if os.getenv("BENCH_CLOSE") == "1" then
  wrk.headers["Connection"] = "close"
end

if rotate > 1 then
  -- Pre-built requests: the rotation costs the load generator one table index per request,
  -- not a string format, so the load generator is not what is measured.
  local requests = {}
  local counter = 0
  local threads = 0
  setup = function(thread)
    thread:set("tid", threads)
    threads = threads + 1
  end
  init = function(args)
    for i = 0, rotate - 1 do
      wrk.headers["JOB-TOKEN"] = prefix .. i
      requests[i] = wrk.format()
    end
    -- Each thread starts at a different point of the rotation.
    counter = ((tid or 0) * 487) % rotate
  end
  request = function()
    counter = (counter + 1) % rotate
    return requests[counter]
  end
end

if delay_ms > 0 then
  delay = function()
    return delay_ms
  end
end

done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
