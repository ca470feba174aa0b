-- The charge script: one EVALSHA per metered request, atomic.  Its SHA1 is
-- computed from the embedded text at configuration time
-- (ngx_http_quota_script_init), so it cannot drift from it.  The argument
-- and reply positions, modes and codes are the names of protocol.def,
-- defined by the prelude gen.sh puts before this text.
--
-- Redis turns Lua numbers into integers by cutting the fraction, so every
-- value returned is an integer (or a string), and money is kept in
-- integer micro-USD.
--
-- KEYS[1]  P{T}:account.  Every other key the script touches is named
--          from ARGV[ARG_BASE] = "P{T}:" because its name depends on the
--          account's billing anchor, which only the script knows; they all
--          carry the tenant's hash tag, so they live in KEYS[1]'s slot.
--
-- ARGV: ARG_* of protocol.def, then from ARG_METRICS k x (METRIC, COST,
-- "m"|"d"), then the plan table (built per rule at configuration time):
-- the number of plans, and per plan: NAME, "GRACE RATE RATE_MS BURST
-- CONCURRENCY LEASE_MS" (only "GRACE" when RATE and CONCURRENCY are 0),
-- then k x "LIMIT PER_SEAT PRICE" (LIMIT -1: none, PRICE in micro-USD, -1:
-- no overage).
--
-- ARGV[ARG_CALENDAR] = "PREV_1ST PREV_DAYS PREV_YM CUR_DAYS NEXT_DAYS
-- BEFORE_1ST BEFORE_DAYS BEFORE_YM TODAY_END" (BEFORE: the month before
-- the previous one).  Redis' cost per request is mostly Lua turning ARGV
-- into strings and numbers, so what is rarely used travels packed and is
-- parsed on demand.
--
-- Reply: REPLY_* of protocol.def: code, index, plan, period start and end,
-- retry after (ms), slot taken, request units granted, then k x (used,
-- limit).  index: the
-- refused metric (1-based) for CODE_QUOTA and CODE_RANGE (0: the overage
-- cost).  CODE_CORRUPT adds "KEY FIELD" (nothing written).  used_i is
-- after the charge when charged, else before; limit_i is what the headers
-- report: the custom limit, or the plan's (x seats), -1: none.  A report
-- (MODE_REPORT*) adds the REPORT_* tail, and MODE_REPORT_DAILY the daily
-- hash as a count and field/value pairs.
--
-- Every value is checked before the first write, so a charge is all or
-- nothing; numbers are written as digits (Redis' Lua prints 1e+17).
--
-- Decision order (SPEC 4): a voided charge (its tombstone), suspended,
-- rate (GCRA), concurrency, quota with grace or overage (a zero cost is
-- never refused by it), spending cap, the 2^53 range; nothing is written
-- unless all pass, except the alert of a refusal (once per tenant, metric
-- and period).  An admitted charge writes its record P{T}:c:ID (after the
-- daily hash) for the void script (void.lua).
--
-- Leases (quota_lease, SPEC 9): with ARG_LEASE_N >= 2, once one request
-- unit has passed every check, n units of the same cost vector are charged
-- at once (see lease_size below; settle.lua gives back what a node did not
-- spend).  MODE_FORCE charges usage quota_fallback admitted while Redis was
-- away: nothing refuses it, its record makes a resend a no-op.
--
-- Alerts go to the capped stream P{T}:alerts; the hash
-- P{T}:alerted:START remembers which fired this period.  Events are
-- published on the channel named in ARGV[ARG_NOTIFY] as JSON.
local acct, base = KEYS[1], ARGV[ARG_BASE]
local mode = tonumber(ARGV[ARG_MODE])
local now_ms = tonumber(ARGV[ARG_NOW_MS])
local now = math.floor(now_ms / 1000)
local MAXI = 9007199254740991
local k = tonumber(ARGV[ARG_NCHARGES])
local names, costs, argcost, daily = {}, {}, {}, {}
local pos = ARG_METRICS
for i = 1, k do
  names[i] = ARGV[pos + METRIC_NAME_OFF]
  argcost[i] = ARGV[pos + METRIC_COST_OFF]
  costs[i] = tonumber(argcost[i])
  daily[i] = ARGV[pos + METRIC_PERIOD_OFF] == 'd'
  pos = pos + METRIC_ARGS
end
local used, limits = {}, {}
local p_idx, pstart, pend, slot, granted = 0, 0, 0, 0, 1
local function finish(code, idx, retry)
  -- presized (no regrowth); the nils past the last element are no part
  -- of the reply
  local r = {nil, nil, nil, nil, nil, nil, nil, nil, nil, nil}
  r[REPLY_CODE], r[REPLY_INDEX], r[REPLY_PLAN] = code, idx, p_idx
  r[REPLY_START], r[REPLY_END] = pstart, pend
  r[REPLY_RETRY], r[REPLY_SLOT] = retry, slot
  r[REPLY_GRANTED] = granted
  for i = 1, k do
    local at = REPLY_METRICS + (i - 1) * REPLY_METRIC_ELTS
    r[at + REPLY_USED_OFF] = used[i] or 0
    r[at + REPLY_LIMIT_OFF] = limits[i] or -1
  end
  return r
end
-- data the script cannot count with: answered, never a runtime error
local function corrupt(key, field)
  local r = finish(CODE_CORRUPT, 0, 0)
  r[#r + 1] = key .. ' ' .. field
  return r
end
-- a field that must be a number when present: false (absent), nil (bad)
local function number(v)
  if not v then return false end
  local n = tonumber(v)
  if not n or n ~= n or n == math.huge or n == -math.huge then
    return nil
  end
  return n
end
-- a counter: an integer the module wrote (HINCRBY), 0 when absent
local function counter(key, field)
  local v = redis.call('HGET', key, field)
  if not v then return 0 end
  if not string.match(v, '^%-?%d+$') then return nil end
  return tonumber(v)
end
-- integers as digits: Lua would print 1e+17
local function int(n)
  if n == 0 then return '0' elseif n == -1 then return '-1' end
  return string.format('%d', n)
end
-- the charge's record: a tombstone there means its gateway gave up on it
-- and voided it (the void script) before it ran: it must do nothing.  A
-- forced charge (MODE_FORCE) finds its own record when it is a resend.
local force = mode == MODE_FORCE
local rec_key
if (mode == MODE_CHARGE or force) and ARGV[ARG_CHARGE_ID] ~= '' then
  rec_key = base .. 'c:' .. ARGV[ARG_CHARGE_ID]
  if redis.call('EXISTS', rec_key) == 1 then
    return finish(CODE_VOIDED, 0, 0)
  end
end
-- the account: one read for everything the decision needs
local a
if k == 1 then
  a = redis.call('HMGET', acct, 'plan', 'seats', 'status', 'overage', 'cap',
                 'anchor', 'next_plan', 'next_plan_at', 'limit:' .. names[1])
else
  local fields = {'plan', 'seats', 'status', 'overage', 'cap', 'anchor',
                  'next_plan', 'next_plan_at'}
  for i = 1, k do fields[8 + i] = 'limit:' .. names[i] end
  a = redis.call('HMGET', acct, unpack(fields))
end
if ARGV[ARG_REQUIRE_ACCOUNT] == '1' and redis.call('EXISTS', acct) == 0 then
  return finish(CODE_UNKNOWN, 0, 0)
end
-- the plan: a scheduled change applies from its instant on
local plan_name = a[1]
local at = number(a[8])
if at == nil then return corrupt(acct, 'next_plan_at') end
if a[7] and at and now >= at then plan_name = a[7] end
local np = tonumber(ARGV[pos])
pos = pos + 1
local per = 2 + k
local p_at
for j = 1, np do
  if ARGV[pos + (j - 1) * per] == plan_name then
    p_at = pos + (j - 1) * per
    p_idx = j
    break
  end
end
if not p_at and tonumber(ARGV[ARG_DEFAULT_PLAN]) > 0 then
  p_idx = tonumber(ARGV[ARG_DEFAULT_PLAN])
  p_at = pos + (p_idx - 1) * per
end
local grace, rate, rate_ms, burst, conc, lease = 0, 0, 0, 0, 0, 0
if p_at then
  local head = ARGV[p_at + 1]
  if not string.find(head, ' ', 1, true) then
    grace = tonumber(head)
  else
    local g, r, rm, b, c, l = string.match(head,
      '^(%d+) (%d+) (%d+) (%d+) (%d+) (%d+)$')
    grace, rate, rate_ms = tonumber(g), tonumber(r), tonumber(rm)
    burst, conc, lease = tonumber(b), tonumber(c), tonumber(l)
  end
end
-- the billing month of the account's anchor (quota_period_from_calendar);
-- anchor 1, the calendar month, is the common case and needs no arithmetic
local anchor = number(a[6])
if anchor == nil then return corrupt(acct, 'anchor') end
anchor = math.floor(anchor or 1)
if anchor < 1 then anchor = 1 elseif anchor > 31 then anchor = 31 end
local function clamped(first, days, ym)
  local d = anchor
  if d > tonumber(days) then d = tonumber(days) end
  return tonumber(first) + (d - 1) * 86400,
         ym .. '-' .. string.format('%02d', d)
end
local cal
local function calendar()
  if not cal then
    cal = {}
    for w in string.gmatch(ARGV[ARG_CALENDAR], '%S+') do
      cal[#cal + 1] = w
    end
  end
  return cal
end
local start, end_date, in_here
if anchor == 1 then
  pstart, pend = tonumber(ARGV[ARG_CUR_START]), tonumber(ARGV[ARG_NEXT_START])
  start, end_date = ARGV[ARG_YM_CUR] .. '-01', ARGV[ARG_YM_NEXT] .. '-01'
  in_here = true
else
  local c = calendar()
  local here, here_date = clamped(ARGV[ARG_CUR_START], c[4],
                                  ARGV[ARG_YM_CUR])
  in_here = now >= here
  if in_here then
    pstart, start = here, here_date
    pend, end_date = clamped(ARGV[ARG_NEXT_START], c[5], ARGV[ARG_YM_NEXT])
  else
    pstart, start = clamped(c[1], c[2], c[3])
    pend, end_date = here, here_date
  end
end
-- a period=day metric counts in its daily field (SPEC 6's daily hash):
-- a "usage:" key named by the day would be the month's on its first day
local usage_key = base .. 'usage:' .. start
local daily_key = base .. 'daily:' .. start
local ttl = pend - now + KEEP
-- limits and usage
local seats = number(a[2])
if seats == nil then return corrupt(acct, 'seats') end
seats = seats or 1
if seats < 0 then seats = 0 end
local trial = a[3] == 'trial'
local overage = a[4] == '1'
local enforce, price, over = {}, {}, {}
for i = 1, k do
  local key, field = usage_key, names[i]
  if daily[i] then
    key, field = daily_key, names[i] .. ':' .. ARGV[ARG_TODAY]
  end
  used[i] = counter(key, field)
  if not used[i] then return corrupt(key, field) end
  local custom = number(a[8 + i])
  if custom == nil then return corrupt(acct, 'limit:' .. names[i]) end
  local lim = -1
  price[i] = -1
  if p_at then
    local l, seat, pr = string.match(ARGV[p_at + 1 + i],
                                     '^(%-?%d+) (%d) (%-?%d+)$')
    lim = tonumber(l)
    if lim >= 0 and seat == '1' then lim = lim * seats end
    price[i] = tonumber(pr)
  end
  if custom and custom >= 0 then lim = math.floor(custom) end
  if lim > MAXI then lim = MAXI end
  limits[i] = lim
  enforce[i] = lim
  if lim >= 0 then enforce[i] = math.floor(lim * (100 + grace) / 100) end
  over[i] = 0
end
-- the usage report (quota_usage): read only
if mode == MODE_REPORT or mode == MODE_REPORT_DAILY then
  local r = finish(CODE_CHARGED, 0, 0)
  local tail = REPLY_METRICS + k * REPLY_METRIC_ELTS
  local cap = tonumber(a[5])
  r[tail + REPORT_STATUS_OFF] = a[3] or ''
  r[tail + REPORT_SEATS_OFF] = seats
  r[tail + REPORT_OVERAGE_OFF] = overage and 1 or 0
  r[tail + REPORT_CAP_OFF] = cap and math.floor(cap * 1000000 + 0.5) or -1
  r[tail + REPORT_COST_OFF] =
    tonumber(redis.call('HGET', usage_key, 'overage_cost')) or 0
  for i = 1, k do
    r[tail + REPORT_UNITS_OFF + i - 1] =
      tonumber(redis.call('HGET', usage_key, names[i] .. ':overage')) or 0
  end
  if mode == MODE_REPORT_DAILY then
    local d = redis.call('HGETALL', daily_key)
    r[#r + 1] = #d / 2
    for i = 1, #d do r[#r + 1] = d[i] end
  end
  return r
end
-- alerts and events
local events = tonumber(ARGV[ARG_EVENTS])
-- alerts and events in one function: every closure is built on every call
local function notify(kind, i, is_alert)
  local t, ch, n, tm = string.match(ARGV[ARG_NOTIFY],
                                    '^(.-)\n(.-)\n(.-)\n(.*)$')
  if is_alert then
    local field = kind .. ':' .. (names[i] or '')
    if i and daily[i] then field = field .. ':' .. ARGV[ARG_TODAY] end
    local mark_key = base .. 'alerted:' .. start
    if redis.call('HSETNX', mark_key, field, 1) == 0 then return end
    redis.call('EXPIRE', mark_key, ttl)
    redis.call('XADD', base .. 'alerts', 'MAXLEN', '~', 1000, '*',
               'type', kind, 'metric', names[i] or '',
               'used', used[i] or 0, 'limit', limits[i] or -1, 'at', n)
    if events == EVENTS_OFF then return end
  end
  -- cjson prints 14 digits (1.2345678901235e+17): numbers of events
  -- travel as marked digit strings, unquoted after encoding (S5)
  local function num(n) return '\1' .. int(n) end
  local l = limits[i]
  local e = {type = is_alert and 'alert' or kind, tenant_id = t,
             metric = names[i] or cjson.null, used = num(used[i] or 0),
             timestamp = n,
             limit = cjson.null, remaining = cjson.null,
             percent = cjson.null}
  if is_alert then e.alert_type = kind end
  if l and l >= 0 then
    e.limit = num(l)
    e.remaining = num(math.max(0, l - used[i]))
    if l > 0 then e.percent = num(math.floor(used[i] * 100 / l))
    elseif used[i] > 0 then e.percent = 100 else e.percent = 0 end
  end
  if i and daily[i] then
    e.quota_reset_date = tm .. 'T00:00:00Z'
  else
    e.quota_reset_date = end_date .. 'T00:00:00Z'
  end
  redis.call('PUBLISH', ch, (string.gsub(cjson.encode(e),
                                        '"\\u0001(%-?%d+)"', '%1')))
end
-- the alerts of a line crossed by the usage of metric i, from "before"
local function crossed(i, before, threshold)
  if limits[i] < 0 then return end
  local line = limits[i] * threshold
  if used[i] * 100 >= line and before * 100 < line then
    notify('approaching_limit', i, true)
  end
  if used[i] >= limits[i] and before < limits[i] then
    notify('quota_exceeded', i, true)
  end
  if over[i] > 0 and before <= limits[i] then
    notify('overage_started', i, true)
  end
end
-- MODE_FORCE charges what was admitted while Redis was away: no check
-- refuses it (suspended, rate, concurrency, quota, cap); only the 2^53
-- range and corrupt data stop it
if a[3] == 'suspended' and not force then
  return finish(CODE_SUSPENDED, 0, 0)
end
if mode == MODE_PEEK then return finish(CODE_CHARGED, 0, 0) end
-- rate: GCRA, a burst of B at once, then one per interval
local tat_new, interval
if rate > 0 and not force then
  interval = rate_ms / rate
  local tat = tonumber(redis.call('GET', base .. 'rate')) or now_ms
  if tat < now_ms then tat = now_ms end
  local wait = tat - now_ms - (burst - 1) * interval
  if wait > 0 then return finish(CODE_RATE, 0, math.ceil(wait)) end
  tat_new = tat + interval
end
-- concurrency: slots expire by themselves when a worker dies
local ckey
local take_slot = false
if conc > 0 and ARGV[ARG_CHARGE_ID] ~= '' and not force then
  ckey = base .. 'inflight'
  redis.call('ZREMRANGEBYSCORE', ckey, '-inf', now_ms)
  if redis.call('ZCARD', ckey) >= conc then
    return finish(CODE_CONCURRENCY, 0, 1000)
  end
  take_slot = true
end
local charged = false
for i = 1, k do
  if costs[i] > 0 then charged = true end
end
-- quota: grace, or overage units past the limit when overage is on; a
-- zero cost is never refused by quota or cap (SPEC 4a)
local add_cost, spent, cap_left = 0, 0, nil
if not trial then
  for i = 1, k do
    if limits[i] >= 0 and costs[i] > 0 then
      if overage and price[i] >= 0 and not daily[i] then
        local before = math.max(0, used[i] - limits[i])
        over[i] = math.max(0, used[i] + costs[i] - limits[i]) - before
-- products and sums of integers below 2^53 are exact while they stay so
        add_cost = add_cost + over[i] * price[i]
        if add_cost > MAXI then return finish(CODE_RANGE, i, 0) end
      elseif used[i] + costs[i] > enforce[i] and not force then
-- HSETNX in notify() fires it once, whoever crossed the line
        notify('quota_exceeded', i, true)
        return finish(CODE_QUOTA, i, 0)
      end
    end
  end
  local cap = number(a[5])
  if cap == nil then return corrupt(acct, 'cap') end
  if overage and charged and (cap or (force and add_cost > 0)) then
    spent = counter(usage_key, 'overage_cost')
    if not spent then return corrupt(usage_key, 'overage_cost') end
    if spent + add_cost > MAXI then return finish(CODE_RANGE, 0, 0) end
    if cap and not force then
      cap_left = math.floor(cap * 1000000 + 0.5) - spent
      if (spent > 0 and cap_left <= 0) or add_cost > cap_left then
        notify('spending_cap_reached', nil, true)
        return finish(CODE_CAP, 0, 0)
      end
    end
  end
end
-- counters stay exact integers (2^53 - 1 at most): a charge that would
-- pass that cannot be charged (400 BAD_COST); quota refusals come first
for i = 1, k do
  if costs[i] > 0 and used[i] + costs[i] > MAXI then
    return finish(CODE_RANGE, i, 0)
  end
end

-- a lease: the one unit above passed every check; n units of the same
-- cost vector are reserved at once when the plan has no rate and no
-- concurrency, n = min(LEASE_N, headroom / 4), so that a lease shrinks to
-- exact charging near the enforcement point; overage units within the cap
local asked = tonumber(ARGV[ARG_LEASE_N]) or 1
if asked >= 2 and mode == MODE_CHARGE and charged and rate == 0
   and conc == 0 then
  -- the overage units of n request units of metric i (0 when not billed)
  local function lease_over(i, n)
    if trial or limits[i] < 0 or not overage or price[i] < 0 or daily[i] then
      return 0
    end
    return math.max(0, used[i] + n * costs[i] - limits[i])
           - math.max(0, used[i] - limits[i])
  end
  -- n request units fit: counters and cost within 2^53 - 1, cost within cap
  local function lease_fits(n)
    local cost = 0
    for i = 1, k do
      if costs[i] > 0 then
        if used[i] + n * costs[i] > MAXI then return false end
        cost = cost + lease_over(i, n) * price[i]
      end
    end
    if spent + cost > MAXI then return false end
    return not cap_left or cost <= cap_left
  end
  -- the lease's size: at most n, a quarter of the headroom before the
  -- first enforcement point, and what fits; below 2 it is an exact charge
  local function lease_size(n)
    if not trial then
      for i = 1, k do
        if costs[i] > 0 and limits[i] >= 0
           and not (overage and price[i] >= 0 and not daily[i]) then
          n = math.min(n, math.floor((enforce[i] - used[i]) / costs[i] / 4))
        end
      end
    end
    if n < 2 then return 1 end
    if lease_fits(n) then return n end
    local lo, hi = 1, n
    while hi - lo > 1 do
      local mid = math.floor((lo + hi) / 2)
      if lease_fits(mid) then lo = mid else hi = mid end
    end
    if lo < 2 then return 1 end
    return lo
  end
  granted = lease_size(asked)
  if granted >= 2 then
    add_cost = 0
    for i = 1, k do
      if costs[i] > 0 then
        over[i] = lease_over(i, granted)
        add_cost = add_cost + over[i] * price[i]
        costs[i] = costs[i] * granted
        argcost[i] = int(costs[i])
      end
    end
  end
end
-- admitted: nothing below can fail (the void undoes it if it does).  The
-- record of what is written, so that a void (the gateway gave up waiting,
-- the script failed) can undo exactly that:
-- "START TODAY GCRA_STEP OVERAGE_COST N" + per charged metric
-- "NAME COST m|d OVERAGE_UNITS PRICE LIMIT" (COST: of the N request units,
-- N >= 2 for a lease, whose settle gives back unspent units; PRICE: micro-
-- USD per overage unit, -1: none; LIMIT: past it units were billed as
-- overage, -1: not billed; a settle or a void gives overage back against
-- the counter as it is then: overage = max(0, used - LIMIT) at rest, as
-- charges leave it).  An exact charge's record is the field ID of
-- the hash P{T}:r:BUCKET (BUCKET: ARG_NOW_MS / RECORD_BUCKET_MS), living at
-- least RECORD_TTL; a lease's is the key P{T}:c:ID (its ttl + 1 h, for
-- its settle), a forced charge's too (FORCE_RECORD_TTL: its resends find
-- it).  P{T}:c:ID is also where a void leaves its tombstone.
-- the daily hash first: the one key no read above has type-checked, so a
-- wrong type fails the script before anything is written
local day = {}
for i = 1, k do
  if costs[i] > 0 then
    day[i] = redis.call('HINCRBY', daily_key,
                        names[i] .. ':' .. ARGV[ARG_TODAY], argcost[i])
-- a key gets its TTL when a charge creates its field, not on every charge
    if day[i] == costs[i] then redis.call('EXPIRE', daily_key, ttl) end
  end
end
if rec_key and (charged or tat_new or take_slot) then
  local rec = start .. ' ' .. ARGV[ARG_TODAY] .. ' '
              .. (tat_new and string.format('%.17g', interval) or '0') .. ' '
              .. int(add_cost) .. ' ' .. granted
  for i = 1, k do
    if costs[i] > 0 then
      local billed = not trial and limits[i] >= 0 and overage
                     and price[i] >= 0 and not daily[i]
      rec = rec .. ' ' .. names[i] .. ' ' .. argcost[i]
            .. (daily[i] and ' d ' or ' m ') .. int(over[i]) .. ' '
            .. int(price[i]) .. ' ' .. (billed and int(limits[i]) or '-1')
    end
  end
  if granted >= 2 or force then
    redis.call('SET', rec_key, rec, 'EX',
               force and FORCE_RECORD_TTL
               or tonumber(ARGV[ARG_LEASE_TTL]) + LEASE_RECORD_EXTRA)
  else
    -- an exact charge's record is a field of the tenant's hash of this
    -- RECORD_BUCKET_MS: a key per charge cost Redis about 5 us more (a new
    -- key and its expiry, then its deletion); the hash expires RECORD_TTL
    -- after the bucket ends
    local bucket = base .. 'r:' .. math.floor(now_ms / RECORD_BUCKET_MS)
    -- the field "_" is there from the bucket's first record on: HSET
    -- answers 2 new fields exactly when it creates the bucket
    if redis.call('HSET', bucket, '_', 1, ARGV[ARG_CHARGE_ID], rec) == 2 then
      redis.call('PEXPIRE', bucket, RECORD_BUCKET_MS + RECORD_TTL * 1000)
    end
  end
end
if tat_new then
  redis.call('SET', base .. 'rate', tat_new, 'PX',
             math.ceil(tat_new - now_ms) + 1000)
end
if take_slot then
  slot = 1
  redis.call('ZADD', ckey, now_ms + lease, ARGV[ARG_CHARGE_ID])
  redis.call('PEXPIRE', ckey, lease + 1000)
end
local threshold = tonumber(ARGV[ARG_THRESHOLD])
for i = 1, k do
  if costs[i] > 0 then
    if daily[i] then
      used[i] = day[i]
    else
      used[i] = redis.call('HINCRBY', usage_key, names[i], argcost[i])
      if used[i] == costs[i] then redis.call('EXPIRE', usage_key, ttl) end
    end
    if over[i] > 0 then
      redis.call('HINCRBY', usage_key, names[i] .. ':overage', int(over[i]))
    end
-- the first units of a new period, after usage in the previous one
    if used[i] == costs[i] and not daily[i] then
      -- the start of the period before this one
      local c, _, before = calendar()
      if in_here then _, before = clamped(c[1], c[2], c[3])
      else _, before = clamped(c[6], c[7], c[8]) end
      if (tonumber(redis.call('HGET', base .. 'usage:' .. before,
                              names[i])) or 0) > 0 then
        notify('quota_reset', i, true)
      end
    end
-- alerts fire when a charge crosses a line, so a tenant past it costs no
-- extra write per request
    crossed(i, used[i] - costs[i], threshold)
  end
end
if add_cost > 0 then
  redis.call('HINCRBY', usage_key, 'overage_cost', int(add_cost))
end
-- one usage_update per charged metric (SPEC 11: live clients see each)
if events == EVENTS_ON then
  for i = 1, k do
    if costs[i] > 0 then notify('usage_update', i, false) end
  end
end
return finish(CODE_CHARGED, 0, 0)
