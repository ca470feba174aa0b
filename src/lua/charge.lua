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
-- KEYS: KEY_* of protocol.def, every key the script touches (Redis
-- Cluster and ACL key patterns check them), all with the tenant's hash
-- tag.  The period keys (usage, daily, alerted, the period before's usage)
-- are named by the gateway for the billing anchor it guesses; when the
-- account's anchor names other keys the script writes nothing and answers
-- CODE_ANCHOR with the anchor at REPLY_INDEX (the gateway resends).
--
-- ARGV: ARG_* of protocol.def, then from ARG_METRICS k x (METRIC, COST,
-- "m"|"d"), then the plan table (built per rule at configuration time):
-- the number of plans, and per plan: NAME, "GRACE RATE RATE_MS BURST
-- CONCURRENCY LEASE_MS" (only "GRACE" when RATE and CONCURRENCY are 0),
-- then k x "LIMIT PER_SEAT PRICE" (LIMIT -1: none, PRICE in micro-USD, -1:
-- no overage; "LIMIT" alone when PER_SEAT is 0 and PRICE -1).
--
-- ARGV[ARG_RECORD]: an exact charge's record in its common form (below).
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
local acct, base = KEYS[KEY_ACCOUNT], ARGV[ARG_BASE]
local mode = tonumber(ARGV[ARG_MODE])
local force = mode == MODE_FORCE
local now_ms = tonumber(ARGV[ARG_NOW_MS])
local now = math.floor(now_ms / 1000)
local MAXI = 9007199254740991
-- Redis runs this whole text on every EVALSHA: every table, closure and
-- string it builds costs every request, so the common path builds few (a
-- closure over the script's locals costs most: one upvalue each).
-- The reply, filled as the script learns its parts: (used, limit) of
-- charged metric i at r[at_i + REPLY_*_OFF] (used after the charge when
-- charged, else before); done() adds the code ("bad": CODE_CORRUPT's
-- "KEY FIELD").
local r = {nil, nil, nil, nil, nil, nil, nil, nil, nil, nil}
r[REPLY_PLAN], r[REPLY_START], r[REPLY_END] = 0, 0, 0
r[REPLY_SLOT], r[REPLY_GRANTED] = 0, 1
local function done(code, idx, retry, bad)
  r[REPLY_CODE], r[REPLY_INDEX], r[REPLY_RETRY] = code, idx, retry
  if bad then r[#r + 1] = bad end
  return r
end
-- Per charged metric one table: name, cost (and its ARGV string), daily,
-- its reply pair's position; then used, limit, enforcement point, price,
-- overage units.
local k = tonumber(ARGV[ARG_NCHARGES])
local ms = {}
local charged = false
local pos = ARG_METRICS
for i = 1, k do
  local arg = ARGV[pos + METRIC_COST_OFF]
  local m = {name = ARGV[pos + METRIC_NAME_OFF], arg = arg,
             cost = tonumber(arg),
             daily = ARGV[pos + METRIC_PERIOD_OFF] == 'd',
             at = REPLY_METRICS + (i - 1) * REPLY_METRIC_ELTS,
             used = 0, limit = -1, enforce = -1, price = -1, over = 0}
  r[m.at + REPLY_USED_OFF], r[m.at + REPLY_LIMIT_OFF] = 0, -1
  if m.cost > 0 then charged = true end
  ms[i] = m
  pos = pos + METRIC_ARGS
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
  if not string.find(v, '^%-?%d+$') then return nil end
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
local id = ARGV[ARG_CHARGE_ID]
local rec_key
if (mode == MODE_CHARGE or force) and id ~= '' then
  rec_key = KEYS[KEY_RECORD]
  if redis.call('EXISTS', rec_key) == 1 then
    return done(CODE_VOIDED, 0, 0)
  end
end
-- the account: one read for everything the decision needs
local a
if k == 1 then
  a = redis.call('HMGET', acct, 'plan', 'seats', 'status', 'overage', 'cap',
                 'anchor', 'next_plan', 'next_plan_at',
                 'limit:' .. ms[1].name)
else
  local fields = {'plan', 'seats', 'status', 'overage', 'cap', 'anchor',
                  'next_plan', 'next_plan_at'}
  for i = 1, k do fields[8 + i] = 'limit:' .. ms[i].name end
  a = redis.call('HMGET', acct, unpack(fields))
end
if ARGV[ARG_REQUIRE_ACCOUNT] == '1' and redis.call('EXISTS', acct) == 0 then
  return done(CODE_UNKNOWN, 0, 0)
end
-- the plan: a scheduled change applies from its instant on
local plan_name = a[1]
if a[8] then
  local at = number(a[8])
  if at == nil then return done(CODE_CORRUPT, 0, 0, acct .. ' next_plan_at') end
  if a[7] and now >= at then plan_name = a[7] end
end
local np = tonumber(ARGV[pos])
pos = pos + 1
local per = 2 + k
local p_at
for j = 1, np do
  if ARGV[pos] == plan_name then
    p_at = pos
    r[REPLY_PLAN] = j
    break
  end
  pos = pos + per
end
local dflt = not p_at and tonumber(ARGV[ARG_DEFAULT_PLAN])
if dflt and dflt > 0 then
  p_at = ARG_METRICS + k * METRIC_ARGS + 1 + (dflt - 1) * per
  r[REPLY_PLAN] = dflt
end
-- "GRACE" alone, or "GRACE RATE RATE_MS BURST CONCURRENCY LEASE_MS"
local grace, rate, rate_ms, burst, conc, lease = 0, 0, 0, 0, 0, 0
if p_at then
  local head = ARGV[p_at + 1]
  grace = tonumber(head)
  if not grace then
    local g, r_, rm, b, c, l = string.match(head,
      '^(%d+) (%d+) (%d+) (%d+) (%d+) (%d+)$')
    grace, rate, rate_ms = tonumber(g), tonumber(r_), tonumber(rm)
    burst, conc, lease = tonumber(b), tonumber(c), tonumber(l)
  end
end
-- the billing month of the account's anchor (quota_period_from_calendar);
-- anchor 1, the calendar month, is the common case and needs no arithmetic
local anchor = 1
if a[6] then
  anchor = number(a[6])
  if anchor == nil then return done(CODE_CORRUPT, 0, 0, acct .. ' anchor') end
  anchor = math.floor(anchor)
  if anchor < 1 then anchor = 1 elseif anchor > 31 then anchor = 31 end
end
-- the calendar ARGV words, and the start (epoch s, "YYYY-MM-DD") of a
-- month of DAYS days from FIRST and YM, clamped to the anchor: used only
-- for anchors past 1 and by the first charge of a period (no upvalues: a
-- closure over the script's locals costs every call)
local function clamped(anchor, first, days, ym)
  local d = anchor
  if d > tonumber(days) then d = tonumber(days) end
  return tonumber(first) + (d - 1) * 86400,
         ym .. '-' .. string.format('%02d', d)
end
local function words(s)
  local w = {}
  for x in string.gmatch(s, '%S+') do w[#w + 1] = x end
  return w
end
-- (end_date: for anchor 1 the 1st of next month, built when an event needs
-- it)
local pstart, pend, start, end_date, in_here
if anchor == 1 then
  pstart, pend = tonumber(ARGV[ARG_CUR_START]), tonumber(ARGV[ARG_NEXT_START])
  start = ARGV[ARG_YM_CUR] .. '-01'
  in_here = true
else
  local c = words(ARGV[ARG_CALENDAR])
  local here, here_date = clamped(anchor, ARGV[ARG_CUR_START], c[4],
                                  ARGV[ARG_YM_CUR])
  in_here = now >= here
  if in_here then
    pstart, start = here, here_date
    pend, end_date = clamped(anchor, ARGV[ARG_NEXT_START], c[5],
                             ARGV[ARG_YM_NEXT])
  else
    pstart, start = clamped(anchor, c[1], c[2], c[3])
    pend, end_date = here, here_date
  end
end
r[REPLY_START], r[REPLY_END] = pstart, pend
-- a period=day metric counts in its daily field (SPEC 6's daily hash):
-- a "usage:" key named by the day would be the month's on its first day
-- (the keys C named for its guess of the anchor: another anchor's answer
-- CODE_ANCHOR, nothing written)
local usage_key = KEYS[KEY_USAGE]
if usage_key ~= base .. 'usage:' .. start then
  return done(CODE_ANCHOR, anchor, 0)
end
-- anchors 28-31 clamped in a short month start on the same day (30 and 31
-- in November): the periods before tell them apart (KEY_BEFORE)
if anchor >= 28 then
  local c, _, before = words(ARGV[ARG_CALENDAR])
  if in_here then _, before = clamped(anchor, c[1], c[2], c[3])
  else _, before = clamped(anchor, c[6], c[7], c[8]) end
  if KEYS[KEY_BEFORE] ~= base .. 'usage:' .. before then
    return done(CODE_ANCHOR, anchor, 0)
  end
end
local daily_key = KEYS[KEY_DAILY]
local today = ARGV[ARG_TODAY]
local ttl = pend - now + KEEP
-- limits and usage
local seats = 1
if a[2] then
  seats = number(a[2])
  if seats == nil then return done(CODE_CORRUPT, 0, 0, acct .. ' seats') end
  if seats < 0 then seats = 0 end
end
local trial = a[3] == 'trial'
local overage = a[4] == '1'
local priced = false
for i = 1, k do
  local m = ms[i]
  local key, field = usage_key, m.name
  if m.daily then
    m.field = m.name .. ':' .. today
    key, field = daily_key, m.field
  end
  local used = counter(key, field)
  if not used then return done(CODE_CORRUPT, 0, 0, key .. ' ' .. field) end
  m.used = used
  r[m.at + REPLY_USED_OFF] = used
  local custom = a[8 + i]
  if custom then
    custom = number(custom)
    if custom == nil then
      return done(CODE_CORRUPT, 0, 0, acct .. ' limit:' .. m.name)
    end
  end
  -- the plan's "LIMIT" alone, or "LIMIT PER_SEAT PRICE"
  local lim = -1
  if p_at then
    local spec = ARGV[p_at + 1 + i]
    lim = tonumber(spec)
    if not lim then
      local l, seat, pr = string.match(spec, '^(%-?%d+) (%d) (%-?%d+)$')
      lim = tonumber(l)
      if lim >= 0 and seat == '1' then lim = lim * seats end
      m.price = tonumber(pr)
    end
  end
  if custom and custom >= 0 then lim = math.floor(custom) end
  if lim > MAXI then lim = MAXI end
  if m.price >= 0 and m.cost > 0 then priced = true end
  m.limit = lim
  r[m.at + REPLY_LIMIT_OFF] = lim
  m.enforce = lim
  if lim >= 0 and grace ~= 0 then
    m.enforce = math.floor(lim * (100 + grace) / 100)
  end
end
-- the usage report (quota_usage): read only
if mode == MODE_REPORT or mode == MODE_REPORT_DAILY then
  done(CODE_CHARGED, 0, 0)
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
      tonumber(redis.call('HGET', usage_key, ms[i].name .. ':overage')) or 0
  end
  if mode == MODE_REPORT_DAILY then
    local d = redis.call('HGETALL', daily_key)
    r[#r + 1] = #d / 2
    for i = 1, #d do r[#r + 1] = d[i] end
  end
  return r
end
-- MODE_FORCE charges what was admitted while Redis was away: no check
-- refuses it (suspended, rate, concurrency, quota, cap); only the 2^53
-- range and corrupt data stop it
if a[3] == 'suspended' and not force then
  return done(CODE_SUSPENDED, 0, 0)
end
if mode == MODE_PEEK then return done(CODE_CHARGED, 0, 0) end
-- rate: GCRA, a burst of B at once, then one per interval
local tat_new, interval
if rate > 0 and not force then
  interval = rate_ms / rate
  local tat = tonumber(redis.call('GET', KEYS[KEY_RATE])) or now_ms
  if tat < now_ms then tat = now_ms end
  local wait = tat - now_ms - (burst - 1) * interval
  if wait > 0 then return done(CODE_RATE, 0, math.ceil(wait)) end
  tat_new = tat + interval
end
-- concurrency: slots expire by themselves when a worker dies
local ckey
local take_slot = false
if conc > 0 and id ~= '' and not force then
  ckey = KEYS[KEY_INFLIGHT]
  redis.call('ZREMRANGEBYSCORE', ckey, '-inf', now_ms)
  if redis.call('ZCARD', ckey) >= conc then
    return done(CODE_CONCURRENCY, 0, 1000)
  end
  take_slot = true
end
-- quota: grace, or overage units past the limit when overage is on; a
-- zero cost is never refused by quota or cap (SPEC 4a).  A refusal by
-- quota or cap fires its alert below (HSETNX: once, whoever crossed the
-- line) and writes nothing else.
local code, idx = CODE_CHARGED, 0
local add_cost, spent, cap_left = 0, 0, nil
if not trial then
  for i = 1, k do
    local m = ms[i]
    if m.limit >= 0 and m.cost > 0 then
      if overage and m.price >= 0 and not m.daily then
        local before = math.max(0, m.used - m.limit)
        m.over = math.max(0, m.used + m.cost - m.limit) - before
-- products and sums of integers below 2^53 are exact while they stay so
        add_cost = add_cost + m.over * m.price
        if add_cost > MAXI then return done(CODE_RANGE, i, 0) end
      elseif m.used + m.cost > m.enforce and not force then
        code, idx = CODE_QUOTA, i
        break
      end
    end
  end
  if code == CODE_CHARGED then
    local cap = a[5] and number(a[5])
    if cap == nil then return done(CODE_CORRUPT, 0, 0, acct .. ' cap') end
    if overage and charged and (cap or (force and add_cost > 0)) then
      spent = counter(usage_key, 'overage_cost')
      if not spent then
        return done(CODE_CORRUPT, 0, 0, usage_key .. ' overage_cost')
      end
      if spent + add_cost > MAXI then return done(CODE_RANGE, 0, 0) end
      if cap and not force then
        cap_left = math.floor(cap * 1000000 + 0.5) - spent
        if (spent > 0 and cap_left <= 0) or add_cost > cap_left then
          code = CODE_CAP
        end
      end
    end
  end
end
-- the alerts to fire, in order: kind, metric index (0: none)
local alerts
if code == CODE_QUOTA then
  alerts = {'quota_exceeded', idx}
elseif code == CODE_CAP then
  alerts = {'spending_cap_reached', 0}
else
-- counters stay exact integers (2^53 - 1 at most): a charge that would
-- pass that cannot be charged (400 BAD_COST); quota refusals come first
for i = 1, k do
  if ms[i].cost > 0 and ms[i].used + ms[i].cost > MAXI then
    return done(CODE_RANGE, i, 0)
  end
end

-- a lease: the one unit above passed every check; n units of the same
-- cost vector are reserved at once when the plan has no rate and no
-- concurrency, n = min(LEASE_N, headroom / 4), so that a lease shrinks to
-- exact charging near the enforcement point; overage units within the cap
local asked = tonumber(ARGV[ARG_LEASE_N]) or 1
local granted = 1
if asked >= 2 and mode == MODE_CHARGE and charged and rate == 0
   and conc == 0 then
  -- the overage units of n request units of metric m (0 when not billed)
  local function lease_over(m, n)
    if trial or m.limit < 0 or not overage or m.price < 0 or m.daily then
      return 0
    end
    return math.max(0, m.used + n * m.cost - m.limit)
           - math.max(0, m.used - m.limit)
  end
  -- n request units fit: counters and cost within 2^53 - 1, cost within cap
  local function lease_fits(n)
    local cost = 0
    for i = 1, k do
      local m = ms[i]
      if m.cost > 0 then
        if m.used + n * m.cost > MAXI then return false end
        cost = cost + lease_over(m, n) * m.price
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
        local m = ms[i]
        if m.cost > 0 and m.limit >= 0
           and not (overage and m.price >= 0 and not m.daily) then
          n = math.min(n, math.floor((m.enforce - m.used) / m.cost / 4))
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
      local m = ms[i]
      if m.cost > 0 then
        m.over = lease_over(m, granted)
        add_cost = add_cost + m.over * m.price
        m.cost = m.cost * granted
        m.arg = int(m.cost)
      end
    end
  end
end
r[REPLY_GRANTED] = granted
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
for i = 1, k do
  local m = ms[i]
  if m.cost > 0 then
    m.field = m.field or m.name .. ':' .. today
    m.day = redis.call('HINCRBY', daily_key, m.field, m.arg)
-- a key gets its TTL when a charge creates its field, not on every charge
    if m.day == m.cost then redis.call('EXPIRE', daily_key, ttl) end
  end
end
if rec_key and (charged or tat_new or take_slot) then
  -- C sends the record of the common case, anchor 1, no GCRA step, one
  -- request unit, no charged metric with a price (so no overage units):
  -- concatenating it here cost about 1 us per request
  local rec = ARGV[ARG_RECORD]
  if anchor ~= 1 or tat_new or granted ~= 1 or priced then
    rec = start .. ' ' .. today .. ' '
          .. (tat_new and string.format('%.17g', interval) or '0') .. ' '
          .. int(add_cost) .. ' ' .. int(granted)
    for i = 1, k do
      local m = ms[i]
      if m.cost > 0 then
        local billed = not trial and m.limit >= 0 and overage
                       and m.price >= 0 and not m.daily
        rec = rec .. ' ' .. m.name .. ' ' .. m.arg
              .. (m.daily and ' d ' or ' m ') .. int(m.over) .. ' '
              .. int(m.price) .. ' ' .. (billed and int(m.limit) or '-1')
      end
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
    local bucket = KEYS[KEY_BUCKET]
    -- the field "_" is there from the bucket's first record on: HSET
    -- answers 2 new fields exactly when it creates the bucket
    if redis.call('HSET', bucket, '_', '1', id, rec) == 2 then
      redis.call('PEXPIRE', bucket, RECORD_BUCKET_MS + RECORD_TTL * 1000)
    end
  end
end
if tat_new then
  redis.call('SET', KEYS[KEY_RATE], tat_new, 'PX',
             math.ceil(tat_new - now_ms) + 1000)
end
if take_slot then
  r[REPLY_SLOT] = 1
  redis.call('ZADD', ckey, now_ms + lease, id)
  redis.call('PEXPIRE', ckey, lease + 1000)
end
-- alerts fire when a charge crosses a line, so a tenant past it costs no
-- extra write per request
local threshold = tonumber(ARGV[ARG_THRESHOLD])
for i = 1, k do
  local m = ms[i]
  if m.cost > 0 then
    if m.daily then
      m.used = m.day
    else
      m.used = redis.call('HINCRBY', usage_key, m.name, m.arg)
      if m.used == m.cost then redis.call('EXPIRE', usage_key, ttl) end
    end
    r[m.at + REPLY_USED_OFF] = m.used
    if m.over > 0 then
      redis.call('HINCRBY', usage_key, m.name .. ':overage', int(m.over))
    end
-- the first units of a new period, after usage in the previous one
-- (KEY_BEFORE: the usage of the period before this one)
    if m.used == m.cost and not m.daily then
      if (tonumber(redis.call('HGET', KEYS[KEY_BEFORE], m.name)) or 0)
         > 0 then
        alerts = alerts or {}
        alerts[#alerts + 1], alerts[#alerts + 2] = 'quota_reset', i
      end
    end
    -- the lines crossed from "before"
    local lim = m.limit
    if lim >= 0 then
      local before = m.used - m.cost
      local line = lim * threshold
      if m.used * 100 >= line and before * 100 < line then
        alerts = alerts or {}
        alerts[#alerts + 1], alerts[#alerts + 2] = 'approaching_limit', i
      end
      if m.used >= lim and before < lim then
        alerts = alerts or {}
        alerts[#alerts + 1], alerts[#alerts + 2] = 'quota_exceeded', i
      end
      if m.over > 0 and before <= lim then
        alerts = alerts or {}
        alerts[#alerts + 1], alerts[#alerts + 2] = 'overage_started', i
      end
    end
  end
end
if add_cost > 0 then
  redis.call('HINCRBY', usage_key, 'overage_cost', int(add_cost))
end
end
-- alerts and events: built only when one fires (a closure costs every
-- call).  Alerts go to the capped stream P{T}:alerts once per tenant, kind,
-- metric and period (HSETNX in P{T}:alerted:START); events are published
-- as JSON, an alert as one too unless quota_events is off.
local events = tonumber(ARGV[ARG_EVENTS])
-- one usage_update per charged metric (SPEC 11: live clients see each)
local updates = events == EVENTS_ON and code == CODE_CHARGED
if alerts or (updates and charged) then
  local t, ch, n, tm = string.match(ARGV[ARG_NOTIFY],
                                    '^(.-)\n(.-)\n(.-)\n(.*)$')
  end_date = end_date or ARGV[ARG_YM_NEXT] .. '-01'
  -- cjson prints 14 digits (1.2345678901235e+17): numbers of events
  -- travel as marked digit strings, unquoted after encoding (S5)
  local function num(v) return '\1' .. int(v) end
  local function notify(kind, i, is_alert)
    local m = ms[i]
    if is_alert then
      local field = kind .. ':' .. (m and m.name or '')
      if m and m.daily then field = field .. ':' .. today end
      local mark_key = KEYS[KEY_ALERTED]
      if redis.call('HSETNX', mark_key, field, 1) == 0 then return end
      redis.call('EXPIRE', mark_key, ttl)
      redis.call('XADD', KEYS[KEY_ALERTS], 'MAXLEN', '~', 1000, '*',
                 'type', kind, 'metric', m and m.name or '',
                 'used', m and m.used or 0, 'limit', m and m.limit or -1,
                 'at', n)
      if events == EVENTS_OFF then return end
    end
    local e = {type = is_alert and 'alert' or kind, tenant_id = t,
               metric = m and m.name or cjson.null,
               used = num(m and m.used or 0), timestamp = n,
               limit = cjson.null, remaining = cjson.null,
               percent = cjson.null}
    if is_alert then e.alert_type = kind end
    if m and m.limit >= 0 then
      local l, u = m.limit, m.used
      e.limit = num(l)
      e.remaining = num(math.max(0, l - u))
      if l > 0 then e.percent = num(math.floor(u * 100 / l))
      elseif u > 0 then e.percent = 100 else e.percent = 0 end
    end
    if m and m.daily then
      e.quota_reset_date = tm .. 'T00:00:00Z'
    else
      e.quota_reset_date = end_date .. 'T00:00:00Z'
    end
    redis.call('PUBLISH', ch, (string.gsub(cjson.encode(e),
                                          '"\\u0001(%-?%d+)"', '%1')))
  end
  if alerts then
    for j = 1, #alerts, 2 do notify(alerts[j], alerts[j + 1], true) end
  end
  if updates then
    for i = 1, k do
      if ms[i].cost > 0 then notify('usage_update', i, false) end
    end
  end
end
return done(code, idx, 0)
