-- wrk script for scripts/bench: POST a small JSON body as tenant
-- $BENCH_TENANT (with $BENCH_TENANTS > 1: tenants $BENCH_TENANT-1 to -N,
-- in turn) and print one machine-readable line at the end.
wrk.method = "POST"
wrk.body = '{"n":1}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = os.getenv("BENCH_TENANT") or "bench"

local tenants = tonumber(os.getenv("BENCH_TENANTS") or "1")
local reqs, turn = {}, 0

-- the request of the next tenant, formatted once per tenant and thread
local function next_metered()
  if tenants <= 1 then return nil end
  turn = turn % tenants + 1
  return reqs[turn]
end

local function format_tenants()
  if tenants <= 1 then return end
  local base = wrk.headers["X-API-Key"]
  for i = 1, tenants do
    wrk.headers["X-API-Key"] = base .. "-" .. i
    reqs[i] = wrk.format()
  end
  wrk.headers["X-API-Key"] = base
end

if tenants > 1 then
  -- each thread starts with another tenant
  local threads = 0
  function setup(thread)
    threads = threads + 1
    thread:set("id", threads)
  end
  function init(args)
    format_tenants()
    turn = (wrk.thread:get("id") * 37) % tenants
  end
  function request() return next_metered() end
end

-- BENCH_CHECK_N set: each thread sends exactly N metered POSTs, then only
-- unmetered GETs, so nothing metered is in flight when wrk stops and the
-- Redis counter must equal threads x N exactly.
local check_n = tonumber(os.getenv("BENCH_CHECK_N") or "")
if check_n then
  local threads, sent, metered, free = 0, 0

  function setup(thread)          -- main state: number the threads
    threads = threads + 1
    thread:set("id", threads)
  end

  function init(args)             -- thread state, Host is set by now
    format_tenants()
    metered = wrk.format()
    free = wrk.format("GET", "/unmetered", nil, "")
    -- wrk calls request() of the first thread once before starting, only
    -- to inspect it: that call sends nothing
    if wrk.thread:get("id") == 1 then sent = -1 end
  end

  function request()
    sent = sent + 1
    if sent <= check_n then return next_metered() or metered end
    return free
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d non2xx=%d sockerr=%d p99_us=%d p50_us=%d\n",
    summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(99), latency:percentile(50)))
end
