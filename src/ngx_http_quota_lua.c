
/*
 * The Redis scripts.  Their SHA1 is computed at configuration time
 * (ngx_http_quota_script_init), so it cannot drift from the text.
 *
 * Redis turns Lua numbers into integers by cutting the fraction, so every
 * value returned is an integer (or a string), and money is kept in integer
 * micro-USD.
 *
 * The charge script (one EVALSHA per metered request, atomic):
 *
 * KEYS[1]   P{T}:account.  Every other key the script touches is named
 *           from ARGV[1] = "P{T}:" because its name depends on the
 *           account's billing anchor, which only the script knows; they all
 *           carry the tenant's hash tag, so they live in KEYS[1]'s slot.
 *
 * ARGV  1   "P{T}:"                   9   "YYYY-MM" of the next month
 *       2   mode: 0 charge, 1 peek   10  today, "YYYY-MM-DD"
 *           (bypass), 2 report,      11  default plan (1-based, 0: none)
 *           3 report with daily      12  warning threshold, percent
 *       3   now, epoch ms (gateway)  13  events: 0 none, 1 alerts, 2 all
 *       4   quota_require_account    14  the rest of the calendar, read
 *       5   charge id (mode 0) or ""     only for an anchor other than 1
 *       6   current month's 1st, s       or a period change (see below)
 *       7   next month's 1st, s      15  "TENANT\nCHANNEL\nNOW\nTOMORROW",
 *       8   "YYYY-MM" of this month      read only to write an alert/event
 *                                    16  k, the number of charged metrics
 *   then k x: METRIC, COST, "m"|"d" (its period)
 *   then the plan table (built per rule at configuration time): the number
 *   of plans, and per plan: NAME, "GRACE RATE RATE_MS BURST CONCURRENCY
 *   LEASE_MS", then k x "LIMIT PER_SEAT PRICE" (LIMIT -1: none, PRICE in
 *   micro-USD, -1: no overage)
 *
 * ARGV[14] = "PREV_1ST PREV_DAYS PREV_YM CUR_DAYS NEXT_DAYS BEFORE_1ST
 * BEFORE_DAYS BEFORE_YM TODAY_END" (BEFORE: the month before the previous
 * one).  Redis' cost per request is mostly Lua turning ARGV into strings and
 * numbers, so what is rarely used travels packed and is parsed on demand.
 *
 * Reply: { code, index, plan, period_start, period_end, retry_after_ms,
 *          slot_taken, used_1, limit_1, ..., used_k, limit_k }
 * code: 1 charged, 2 quota, 3 spending cap, 4 suspended, 5 unknown tenant,
 *       6 rate, 7 concurrency, 8 voided before it ran (nothing written),
 *       9 a counter or the overage cost would pass 2^53 - 1 (nothing
 *       written), 10 a field that must be a number is not (nothing
 *       written; one more element: "KEY FIELD"); index: the refused
 *       metric (1-based) for 2 and 9 (0: the overage cost).
 *
 * Every value is checked before the first write, so a charge is all or
 * nothing; numbers are written as digits (Redis' Lua prints 1e+17).
 * used_i is after the charge when charged, else before; limit_i is what
 * the headers report: the custom limit, or the plan's (x seats), -1: none.
 * A report (mode 2, 3) adds: status, seats, overage 0|1, cap (micro-USD,
 * -1: none), overage cost, k x overage units, and with mode 3 the daily
 * hash as a count and field/value pairs.
 *
 * Decision order (SPEC 4): a voided charge (its tombstone), suspended,
 * rate (GCRA), concurrency, quota with grace or overage (a zero cost is
 * never refused by it), spending cap, the 2^53 range; nothing is written
 * unless all pass, except the alert of a refusal (once per tenant, metric
 * and period).  An admitted charge writes its record P{T}:c:ID first
 * (after the daily hash), for the void script below.
 *
 * Alerts go to the capped stream P{T}:alerts; the hash
 * P{T}:alerted:START remembers which fired this period.  Events are
 * published on the channel named in ARGV[15] as JSON.
 */


#include "ngx_http_quota_module.h"


#define NGX_HTTP_QUOTA_KEEP  "5356800"      /* 62 days after a period */

/*
 * A charge's record lives this long (seconds): a void that comes later
 * finds nothing to undo.  Voids are sent right behind the charge on the
 * same connection, or right after a reconnect, so this covers a partition
 * of that length; records are per admitted request, so it is short.
 */
#define NGX_HTTP_QUOTA_RECORD_TTL  "10"

/* a void's tombstone lives this long: a charge that runs later is a no-op */
#define NGX_HTTP_QUOTA_TOMBSTONE_TTL  "300"


static const char  ngx_http_quota_charge_text[] =

"local acct, base = KEYS[1], ARGV[1]\n"
"local mode = tonumber(ARGV[2])\n"
"local now_ms = tonumber(ARGV[3])\n"
"local now = math.floor(now_ms / 1000)\n"
"local keep = " NGX_HTTP_QUOTA_KEEP "\n"
"local MAXI = 9007199254740991\n"
"local k = tonumber(ARGV[16])\n"
"local names, costs, argcost, daily = {}, {}, {}, {}\n"
"local pos = 17\n"
"for i = 1, k do\n"
"  names[i] = ARGV[pos]\n"
"  argcost[i] = ARGV[pos + 1]\n"
"  costs[i] = tonumber(ARGV[pos + 1])\n"
"  daily[i] = ARGV[pos + 2] == 'd'\n"
"  pos = pos + 3\n"
"end\n"


"local used, limits = {}, {}\n"
"local p_idx, pstart, pend, slot = 0, 0, 0, 0\n"
"local function finish(code, idx, retry)\n"
"  local r = {code, idx, p_idx, pstart, pend, retry, slot}\n"
"  for i = 1, k do\n"
"    r[#r + 1] = used[i] or 0\n"
"    r[#r + 1] = limits[i] or -1\n"
"  end\n"
"  return r\n"
"end\n"

/* data the script cannot count with: answered, never a runtime error */
"local function corrupt(key, field)\n"
"  local r = finish(10, 0, 0)\n"
"  r[#r + 1] = key .. ' ' .. field\n"
"  return r\n"
"end\n"
/* a field that must be a number when present: false (absent), nil (bad) */
"local function number(v)\n"
"  if not v then return false end\n"
"  local n = tonumber(v)\n"
"  if not n or n ~= n or n == math.huge or n == -math.huge then\n"
"    return nil\n"
"  end\n"
"  return n\n"
"end\n"
/* a counter: an integer the module wrote (HINCRBY), 0 when absent */
"local function counter(key, field)\n"
"  local v = redis.call('HGET', key, field)\n"
"  if not v then return 0 end\n"
"  if not string.match(v, '^%-?%d+$') then return nil end\n"
"  return tonumber(v)\n"
"end\n"
/* integers as digits: Lua would print 1e+17 */
"local function int(n) return string.format('%d', n) end\n"
/* cjson prints 14 digits (1.2345678901235e+17): numbers of events travel as
   marked digit strings, unquoted after encoding (S5) */
"local function num(n) return '\\1' .. int(n) end\n"
"local function json(e)\n"
"  return (string.gsub(cjson.encode(e), '\"\\\\u0001(%-?%d+)\"', '%1'))\n"
"end\n"

/* the charge's record: a tombstone there means its gateway gave up on it
   and voided it (the void script) before it ran: it must do nothing */
"local rec_key\n"
"if mode == 0 and ARGV[5] ~= '' then\n"
"  rec_key = base .. 'c:' .. ARGV[5]\n"
"  if redis.call('EXISTS', rec_key) == 1 then return finish(8, 0, 0) end\n"
"end\n"

/* the account: one read for everything the decision needs */
"local fields = {'plan', 'seats', 'status', 'overage', 'cap', 'anchor',\n"
"                'next_plan', 'next_plan_at'}\n"
"for i = 1, k do fields[8 + i] = 'limit:' .. names[i] end\n"
"local a = redis.call('HMGET', acct, unpack(fields))\n"

"if ARGV[4] == '1' and redis.call('EXISTS', acct) == 0 then\n"
"  return finish(5, 0, 0)\n"
"end\n"

/* the plan: a scheduled change applies from its instant on */
"local plan_name = a[1]\n"
"local at = number(a[8])\n"
"if at == nil then return corrupt(acct, 'next_plan_at') end\n"
"if a[7] and at and now >= at then plan_name = a[7] end\n"
"local np = tonumber(ARGV[pos])\n"
"pos = pos + 1\n"
"local per = 2 + k\n"
"local p_at\n"
"for j = 1, np do\n"
"  if ARGV[pos + (j - 1) * per] == plan_name then\n"
"    p_at = pos + (j - 1) * per\n"
"    p_idx = j\n"
"    break\n"
"  end\n"
"end\n"
"if not p_at and tonumber(ARGV[11]) > 0 then\n"
"  p_idx = tonumber(ARGV[11])\n"
"  p_at = pos + (p_idx - 1) * per\n"
"end\n"
"local grace, rate, rate_ms, burst, conc, lease = 0, 0, 0, 0, 0, 0\n"
"if p_at then\n"
"  local g, r, rm, b, c, l = string.match(ARGV[p_at + 1],\n"
"    '^(%d+) (%d+) (%d+) (%d+) (%d+) (%d+)$')\n"
"  grace, rate, rate_ms = tonumber(g), tonumber(r), tonumber(rm)\n"
"  burst, conc, lease = tonumber(b), tonumber(c), tonumber(l)\n"
"end\n"

/* the billing month of the account's anchor (quota_period_from_calendar);
   anchor 1, the calendar month, is the common case and needs no arithmetic */
"local anchor = number(a[6])\n"
"if anchor == nil then return corrupt(acct, 'anchor') end\n"
"anchor = math.floor(anchor or 1)\n"
"if anchor < 1 then anchor = 1 elseif anchor > 31 then anchor = 31 end\n"
"local function clamped(first, days, ym)\n"
"  local d = anchor\n"
"  if d > tonumber(days) then d = tonumber(days) end\n"
"  return tonumber(first) + (d - 1) * 86400,\n"
"         ym .. '-' .. string.format('%02d', d)\n"
"end\n"
"local cal\n"
"local function calendar()\n"
"  if not cal then\n"
"    cal = {}\n"
"    for w in string.gmatch(ARGV[14], '%S+') do cal[#cal + 1] = w end\n"
"  end\n"
"  return cal\n"
"end\n"
"local start, end_date, in_here\n"
"if anchor == 1 then\n"
"  pstart, pend = tonumber(ARGV[6]), tonumber(ARGV[7])\n"
"  start, end_date, in_here = ARGV[8] .. '-01', ARGV[9] .. '-01', true\n"
"else\n"
"  local c = calendar()\n"
"  local here, here_date = clamped(ARGV[6], c[4], ARGV[8])\n"
"  in_here = now >= here\n"
"  if in_here then\n"
"    pstart, start = here, here_date\n"
"    pend, end_date = clamped(ARGV[7], c[5], ARGV[9])\n"
"  else\n"
"    pstart, start = clamped(c[1], c[2], c[3])\n"
"    pend, end_date = here, here_date\n"
"  end\n"
"end\n"
/* the start of the period before this one, for quota_reset only */
"local function previous_start()\n"
"  local _, p\n"
"  local c = calendar()\n"
"  if in_here then _, p = clamped(c[1], c[2], c[3])\n"
"  else _, p = clamped(c[6], c[7], c[8]) end\n"
"  return p\n"
"end\n"
/* a period=day metric counts in its daily field (SPEC 6's daily hash):
   a "usage:" key named by the day would be the month's on its first day */
"local usage_key = base .. 'usage:' .. start\n"
"local daily_key = base .. 'daily:' .. start\n"
"local function where(i)\n"
"  if daily[i] then return daily_key, names[i] .. ':' .. ARGV[10] end\n"
"  return usage_key, names[i]\n"
"end\n"
"local ttl = pend - now + keep\n"

/* limits and usage */
"local seats = number(a[2])\n"
"if seats == nil then return corrupt(acct, 'seats') end\n"
"seats = seats or 1\n"
"if seats < 0 then seats = 0 end\n"
"local trial = a[3] == 'trial'\n"
"local overage = a[4] == '1'\n"
"local enforce, price, over = {}, {}, {}\n"
"for i = 1, k do\n"
"  local key, field = where(i)\n"
"  used[i] = counter(key, field)\n"
"  if not used[i] then return corrupt(key, field) end\n"
"  local custom = number(a[8 + i])\n"
"  if custom == nil then return corrupt(acct, fields[8 + i]) end\n"
"  local lim = -1\n"
"  price[i] = -1\n"
"  if p_at then\n"
"    local l, seat, pr = string.match(ARGV[p_at + 1 + i],\n"
"                                     '^(%-?%d+) (%d) (%-?%d+)$')\n"
"    lim = tonumber(l)\n"
"    if lim >= 0 and seat == '1' then lim = lim * seats end\n"
"    price[i] = tonumber(pr)\n"
"  end\n"
"  if custom and custom >= 0 then lim = math.floor(custom) end\n"
"  if lim > MAXI then lim = MAXI end\n"
"  limits[i] = lim\n"
"  enforce[i] = lim\n"
"  if lim >= 0 then enforce[i] = math.floor(lim * (100 + grace) / 100) end\n"
"  over[i] = 0\n"
"end\n"

/* the usage report (quota_usage): read only */
"if mode >= 2 then\n"
"  local r = finish(1, 0, 0)\n"
"  local cap = tonumber(a[5])\n"
"  r[#r + 1] = a[3] or ''\n"
"  r[#r + 1] = seats\n"
"  r[#r + 1] = overage and 1 or 0\n"
"  r[#r + 1] = cap and math.floor(cap * 1000000 + 0.5) or -1\n"
"  r[#r + 1] = tonumber(redis.call('HGET', usage_key, 'overage_cost')) or 0\n"
"  for i = 1, k do\n"
"    r[#r + 1] = tonumber(redis.call('HGET', usage_key,\n"
"                                    names[i] .. ':overage')) or 0\n"
"  end\n"
"  if mode == 3 then\n"
"    local d = redis.call('HGETALL', daily_key)\n"
"    r[#r + 1] = #d / 2\n"
"    for i = 1, #d do r[#r + 1] = d[i] end\n"
"  end\n"
"  return r\n"
"end\n"

/* alerts and events */
"local events = tonumber(ARGV[13])\n"
/* alerts and events in one function: every closure is built on every call */
"local function notify(kind, i, is_alert)\n"
"  local t, ch, n, tm = string.match(ARGV[15], '^(.-)\\n(.-)\\n(.-)\\n(.*)$')\n"
"  if is_alert then\n"
"    local field = kind .. ':' .. (names[i] or '')\n"
"    if i and daily[i] then field = field .. ':' .. ARGV[10] end\n"
"    local mark_key = base .. 'alerted:' .. start\n"
"    if redis.call('HSETNX', mark_key, field, 1) == 0 then return end\n"
"    redis.call('EXPIRE', mark_key, ttl)\n"
"    redis.call('XADD', base .. 'alerts', 'MAXLEN', '~', 1000, '*',\n"
"               'type', kind, 'metric', names[i] or '',\n"
"               'used', used[i] or 0, 'limit', limits[i] or -1, 'at', n)\n"
"    if events == 0 then return end\n"
"  end\n"
"  local l = limits[i]\n"
"  local e = {type = is_alert and 'alert' or kind, tenant_id = t,\n"
"             metric = names[i] or cjson.null, used = num(used[i] or 0),\n"
"             timestamp = n,\n"
"             limit = cjson.null, remaining = cjson.null,\n"
"             percent = cjson.null}\n"
"  if is_alert then e.alert_type = kind end\n"
"  if l and l >= 0 then\n"
"    e.limit = num(l)\n"
"    e.remaining = num(math.max(0, l - used[i]))\n"
"    if l > 0 then e.percent = num(math.floor(used[i] * 100 / l))\n"
"    elseif used[i] > 0 then e.percent = 100 else e.percent = 0 end\n"
"  end\n"
"  if i and daily[i] then\n"
"    e.quota_reset_date = tm .. 'T00:00:00Z'\n"
"  else\n"
"    e.quota_reset_date = end_date .. 'T00:00:00Z'\n"
"  end\n"
"  redis.call('PUBLISH', ch, json(e))\n"
"end\n"
/* the alerts of a line crossed by the usage of metric i, from "before" */
"local function crossed(i, before, threshold)\n"
"  if limits[i] < 0 then return end\n"
"  local line = limits[i] * threshold\n"
"  if used[i] * 100 >= line and before * 100 < line then\n"
"    notify('approaching_limit', i, true)\n"
"  end\n"
"  if used[i] >= limits[i] and before < limits[i] then\n"
"    notify('quota_exceeded', i, true)\n"
"  end\n"
"  if over[i] > 0 and before <= limits[i] then\n"
"    notify('overage_started', i, true)\n"
"  end\n"
"end\n"

"if a[3] == 'suspended' then return finish(4, 0, 0) end\n"
"if mode == 1 then return finish(1, 0, 0) end\n"

/* rate: GCRA, a burst of B at once, then one per interval */
"local tat_new, interval\n"
"if rate > 0 then\n"
"  interval = rate_ms / rate\n"
"  local tat = tonumber(redis.call('GET', base .. 'rate')) or now_ms\n"
"  if tat < now_ms then tat = now_ms end\n"
"  local wait = tat - now_ms - (burst - 1) * interval\n"
"  if wait > 0 then return finish(6, 0, math.ceil(wait)) end\n"
"  tat_new = tat + interval\n"
"end\n"

/* concurrency: slots expire by themselves when a worker dies */
"local ckey = base .. 'inflight'\n"
"local take_slot = false\n"
"if conc > 0 and ARGV[5] ~= '' then\n"
"  redis.call('ZREMRANGEBYSCORE', ckey, '-inf', now_ms)\n"
"  if redis.call('ZCARD', ckey) >= conc then return finish(7, 0, 1000) end\n"
"  take_slot = true\n"
"end\n"

"local charged = false\n"
"for i = 1, k do\n"
"  if costs[i] > 0 then charged = true end\n"
"end\n"

/* quota: grace, or overage units past the limit when overage is on; a
   zero cost is never refused by quota or cap (SPEC 4a) */
"local add_cost = 0\n"
"if not trial then\n"
"  for i = 1, k do\n"
"    if limits[i] >= 0 and costs[i] > 0 then\n"
"      if overage and price[i] >= 0 and not daily[i] then\n"
"        local before = math.max(0, used[i] - limits[i])\n"
"        over[i] = math.max(0, used[i] + costs[i] - limits[i]) - before\n"
/* products and sums of integers below 2^53 are exact while they stay so */
"        add_cost = add_cost + over[i] * price[i]\n"
"        if add_cost > MAXI then return finish(9, i, 0) end\n"
"      elseif used[i] + costs[i] > enforce[i] then\n"
/* HSETNX in notify() fires it once, whoever crossed the line */
"        notify('quota_exceeded', i, true)\n"
"        return finish(2, i, 0)\n"
"      end\n"
"    end\n"
"  end\n"
"  local cap = number(a[5])\n"
"  if cap == nil then return corrupt(acct, 'cap') end\n"
"  if overage and cap and charged then\n"
"    cap = math.floor(cap * 1000000 + 0.5)\n"
"    local spent = counter(usage_key, 'overage_cost')\n"
"    if not spent then return corrupt(usage_key, 'overage_cost') end\n"
"    if spent + add_cost > MAXI then return finish(9, 0, 0) end\n"
"    if (spent > 0 and spent >= cap) or spent + add_cost > cap then\n"
"      notify('spending_cap_reached', nil, true)\n"
"      return finish(3, 0, 0)\n"
"    end\n"
"  end\n"
"end\n"

/* counters stay exact integers (2^53 - 1 at most): a charge that would
   pass that cannot be charged (400 BAD_COST); quota refusals come first */
"for i = 1, k do\n"
"  if costs[i] > 0 and used[i] + costs[i] > MAXI then\n"
"    return finish(9, i, 0)\n"
"  end\n"
"end\n"

/* admitted: nothing below can fail (the void undoes it if it does).  The
   record of what is written, so that a void (the gateway gave up waiting,
   the script failed) can undo exactly that:
   "START TODAY GCRA_STEP OVERAGE_COST" + per charged metric
   "NAME COST m|d OVERAGE_UNITS" */
/* the daily hash first: the one key no read above has type-checked, so a
   wrong type fails the script before anything is written */
"local day = {}\n"
"for i = 1, k do\n"
"  if costs[i] > 0 then\n"
"    day[i] = redis.call('HINCRBY', daily_key, names[i] .. ':' .. ARGV[10],\n"
"                        argcost[i])\n"
/* a key gets its TTL when a charge creates its field, not on every charge */
"    if day[i] == costs[i] then redis.call('EXPIRE', daily_key, ttl) end\n"
"  end\n"
"end\n"
"if rec_key and (charged or tat_new or take_slot) then\n"
"  local rec = {start, ARGV[10], tat_new and string.format('%.17g', interval)\n"
"               or '0', int(add_cost)}\n"
"  for i = 1, k do\n"
"    if costs[i] > 0 then\n"
"      rec[#rec + 1] = names[i] .. ' ' .. argcost[i] .. ' '\n"
"                      .. (daily[i] and 'd ' or 'm ') .. int(over[i])\n"
"    end\n"
"  end\n"
"  redis.call('SET', rec_key, table.concat(rec, ' '), 'EX', "
    NGX_HTTP_QUOTA_RECORD_TTL ")\n"
"end\n"
"if tat_new then\n"
"  redis.call('SET', base .. 'rate', tat_new, 'PX',\n"
"             math.ceil(tat_new - now_ms) + 1000)\n"
"end\n"
"if take_slot then\n"
"  slot = 1\n"
"  redis.call('ZADD', ckey, now_ms + lease, ARGV[5])\n"
"  redis.call('PEXPIRE', ckey, lease + 1000)\n"
"end\n"
"local threshold = tonumber(ARGV[12])\n"
"for i = 1, k do\n"
"  if costs[i] > 0 then\n"
"    if daily[i] then\n"
"      used[i] = day[i]\n"
"    else\n"
"      used[i] = redis.call('HINCRBY', usage_key, names[i], argcost[i])\n"
"      if used[i] == costs[i] then redis.call('EXPIRE', usage_key, ttl) end\n"
"    end\n"
"    if over[i] > 0 then\n"
"      redis.call('HINCRBY', usage_key, names[i] .. ':overage', int(over[i]))\n"
"    end\n"
/* the first units of a new period, after usage in the previous one */
"    if used[i] == costs[i] and not daily[i] and (tonumber(redis.call(\n"
"         'HGET', base .. 'usage:' .. previous_start(), names[i])) or 0) > 0\n"
"    then\n"
"      notify('quota_reset', i, true)\n"
"    end\n"
/* alerts fire when a charge crosses a line, so a tenant past it costs no
   extra write per request */
"    crossed(i, used[i] - costs[i], threshold)\n"
"  end\n"
"end\n"
"if add_cost > 0 then\n"
"  redis.call('HINCRBY', usage_key, 'overage_cost', int(add_cost))\n"
"end\n"
/* one usage_update per charged metric (SPEC 11: live clients see each) */
"if events == 2 then\n"
"  for i = 1, k do\n"
"    if costs[i] > 0 then notify('usage_update', i, false) end\n"
"  end\n"
"end\n"
"return finish(1, 0, 0)\n";


/*
 * quota_reconcile, after the response: add DELTA (actual - estimate, may
 * be negative) to a metric charged by this request.  A refund never takes a
 * counter below zero, and no counter passes 2^53 - 1.  Units that move
 * across the limit of an account with overage on are priced (or refunded)
 * like the charge would have; the cap is not checked: the request was
 * admitted already.  A key or field it creates gets its TTL, and a line it
 * crosses upwards fires its alert, as a charge would (once per period).
 *
 * KEYS[1] P{T}:account;  ARGV:
 *   1 counter key, 2 daily key, 3 counter field, 4 DELTA,
 *   5 daily field "METRIC:YYYY-MM-DD" (a period=day metric: 1 = 2, 3 = 5),
 *   6 LIMIT (-1: none), 7 PRICE (micro-USD, -1: none), 8 TTL of 1, 9 TTL
 *   of 2 and of the alert marks, 10 warning threshold (percent), 11 the
 *   alert marks' key, 12 mark suffix ("" or ":YYYY-MM-DD"), 13 METRIC,
 *   14 events (0: none), 15 "TENANT\nCHANNEL\nNOW\nRESET", 16 alerts key
 */
static const char  ngx_http_quota_reconcile_text[] =

"local MAXI = 9007199254740991\n"
"local delta = tonumber(ARGV[4])\n"
"local used = tonumber(redis.call('HGET', ARGV[1], ARGV[3])) or 0\n"
"if used + delta < 0 then delta = -used end\n"
"if used + delta > MAXI then delta = MAXI - used end\n"
"if delta == 0 then return used end\n"
"local limit, price = tonumber(ARGV[6]), tonumber(ARGV[7])\n"
"local function int(n) return string.format('%d', n) end\n"
"if ARGV[1] ~= ARGV[2] or ARGV[3] ~= ARGV[5] then\n"
"  local day = tonumber(redis.call('HGET', ARGV[2], ARGV[5])) or 0\n"
"  local dd = delta\n"
"  if day + dd < 0 then dd = -day end\n"
"  if dd ~= 0 then\n"
"    redis.call('HINCRBY', ARGV[2], ARGV[5], int(dd))\n"
"    if day == 0 then redis.call('EXPIRE', ARGV[2], ARGV[9]) end\n"
"  end\n"
"end\n"
"local over = 0\n"
"if limit >= 0 and price >= 0 then\n"
"  local a = redis.call('HMGET', KEYS[1], 'overage', 'status')\n"
"  if a[1] == '1' and a[2] ~= 'trial' then\n"
"    over = math.max(0, used + delta - limit) - math.max(0, used - limit)\n"
"    if over ~= 0 and math.abs(over * price) <= MAXI then\n"
"      redis.call('HINCRBY', ARGV[1], ARGV[3] .. ':overage', int(over))\n"
"      redis.call('HINCRBY', ARGV[1], 'overage_cost', int(over * price))\n"
"    end\n"
"  end\n"
"end\n"
"local new = redis.call('HINCRBY', ARGV[1], ARGV[3], int(delta))\n"
"if used == 0 then redis.call('EXPIRE', ARGV[1], ARGV[8]) end\n"
"local function alert(kind)\n"
"  if redis.call('HSETNX', ARGV[11], kind .. ':' .. ARGV[13] .. ARGV[12], 1)\n"
"     == 0 then return end\n"
"  redis.call('EXPIRE', ARGV[11], ARGV[9])\n"
"  local t, ch, n, reset =\n"
"    string.match(ARGV[15], '^(.-)\\n(.-)\\n(.-)\\n(.*)$')\n"
"  redis.call('XADD', ARGV[16], 'MAXLEN', '~', 1000, '*', 'type', kind,\n"
"             'metric', ARGV[13], 'used', new, 'limit', limit, 'at', n)\n"
"  if ARGV[14] == '0' then return end\n"
"  local pc = 0\n"
"  if limit > 0 then pc = math.floor(new * 100 / limit)\n"
"  elseif new > 0 then pc = 100 end\n"
"  local function num(v) return '\\1' .. int(v) end\n"
"  local e = cjson.encode({type = 'alert', alert_type = kind,\n"
"    tenant_id = t, metric = ARGV[13], used = num(new), limit = num(limit),\n"
"    remaining = num(math.max(0, limit - new)), percent = num(pc),\n"
"    quota_reset_date = reset, timestamp = n})\n"
/* numbers as digits, not cjson's 14 (S5) */
"  redis.call('PUBLISH', ch, (string.gsub(e, '\"\\\\u0001(%-?%d+)\"', '%1')))\n"
"end\n"
"if limit >= 0 and delta > 0 then\n"
"  local line = limit * tonumber(ARGV[10])\n"
"  if new * 100 >= line and used * 100 < line then\n"
"    alert('approaching_limit')\n"
"  end\n"
"  if new >= limit and used < limit then alert('quota_exceeded') end\n"
"  if over > 0 and used <= limit then alert('overage_started') end\n"
"end\n"
"return new\n";


/*
 * The void of a charge whose outcome the gateway does not know (it timed
 * out, the client went away, the connection dropped, the script failed):
 * idempotent, sent until Redis answers it.  If the charge ran, its record
 * says what it wrote and that is undone (costs, daily, overage units and
 * cost, the GCRA step); in any case the record becomes a tombstone, so a
 * charge that runs later (it was still queued in Redis) writes nothing,
 * and the in-flight slot named by the charge id is removed.  Alerts the
 * charge fired stay.
 *
 * KEYS[1] P{T}:c:ID;  ARGV: "P{T}:", ID
 */
static const char  ngx_http_quota_void_text[] =

"local rec = redis.call('GET', KEYS[1])\n"
"local base = ARGV[1]\n"
"redis.call('SET', KEYS[1], 'v', 'EX', " NGX_HTTP_QUOTA_TOMBSTONE_TTL ")\n"
"redis.call('ZREM', base .. 'inflight', ARGV[2])\n"
"if not rec or rec == 'v' then return 0 end\n"
"local w = {}\n"
"for x in string.gmatch(rec, '%S+') do w[#w + 1] = x end\n"
"local usage_key = base .. 'usage:' .. w[1]\n"
"local daily_key = base .. 'daily:' .. w[1]\n"
"if w[3] ~= '0' then\n"
"  local tat = tonumber(redis.pcall('GET', base .. 'rate'))\n"
"  if tat then\n"
"    redis.pcall('SET', base .. 'rate', tat - tonumber(w[3]), 'KEEPTTL')\n"
"  end\n"
"end\n"
"if w[4] ~= '0' then\n"
"  redis.pcall('HINCRBY', usage_key, 'overage_cost', '-' .. w[4])\n"
"end\n"
"for j = 5, #w - 3, 4 do\n"
"  local name, cost = w[j], '-' .. w[j + 1]\n"
"  if w[j + 2] ~= 'd' then redis.pcall('HINCRBY', usage_key, name, cost) end\n"
"  redis.pcall('HINCRBY', daily_key, name .. ':' .. w[2], cost)\n"
"  if w[j + 3] ~= '0' then\n"
"    redis.pcall('HINCRBY', usage_key, name .. ':overage', '-' .. w[j + 3])\n"
"  end\n"
"end\n"
"return 1\n";


const ngx_str_t  ngx_http_quota_void_lua = {
    sizeof(ngx_http_quota_void_text) - 1,
    (u_char *) ngx_http_quota_void_text
};

const ngx_str_t  ngx_http_quota_charge_lua = {
    sizeof(ngx_http_quota_charge_text) - 1,
    (u_char *) ngx_http_quota_charge_text
};

const ngx_str_t  ngx_http_quota_reconcile_lua = {
    sizeof(ngx_http_quota_reconcile_text) - 1,
    (u_char *) ngx_http_quota_reconcile_text
};
