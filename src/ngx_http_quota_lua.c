
/*
 * The Redis scripts.  Their SHA1 is computed at configuration time
 * (ngx_http_quota_script_init), so it cannot drift from the text.
 *
 * Redis turns Lua numbers into integers by cutting the fraction, so every
 * value returned is an integer, and money is kept in integer micro-USD.
 *
 * The charge script (one EVALSHA per metered request, atomic):
 *
 * KEYS[1]   P{T}:account.  Every other key the script touches is named
 *           from ARGV[1] = "P{T}:" because its name depends on the
 *           account's billing anchor, which only the script knows; they all
 *           carry the tenant's hash tag, so they live in KEYS[1]'s slot.
 *
 * ARGV  1   "P{T}:"                     10  days in the current month
 *       2   mode: 0 charge, 1 peek      11  days in the next month
 *           (bypass: read, write none)  12  "YYYY-MM" of the previous month
 *       3   now, epoch ms (gateway)     13  "YYYY-MM" of the current month
 *       4   quota_require_account 0|1   14  today, "YYYY-MM-DD"
 *       5   in-flight slot id, or ""    15  end of today, epoch s
 *       6   previous month's 1st, s     16  default plan (1-based, 0: none)
 *       7   current month's 1st, s      17  k, the number of charged metrics
 *       8   next month's 1st, s         then k x: METRIC, COST, "m"|"d"
 *       9   days in the previous month  then the plan table (per rule):
 *           number of plans, and per plan: NAME, GRACE%, RATE, RATE_MS,
 *           BURST, CONCURRENCY, LEASE_MS, then k x: LIMIT (-1: none),
 *           PER_SEAT 0|1, PRICE (micro-USD, -1: no overage)
 *
 * Reply: { code, index, plan, period_start, period_end, retry_after_ms,
 *          slot_taken, used_1, limit_1, ..., used_k, limit_k }
 * code: 1 charged, 2 quota, 3 spending cap, 4 suspended, 5 unknown tenant,
 *       6 rate, 7 concurrency; index: the refused metric (1-based) for 2.
 * used_i is after the charge when charged, else before; limit_i is what
 * the headers report: the custom limit, or the plan's (x seats), -1: none.
 *
 * Decision order (SPEC 4): suspended, rate (GCRA), concurrency, quota
 * with grace or overage, spending cap; nothing is written unless all pass.
 */


#include "ngx_http_quota_module.h"


#define NGX_HTTP_QUOTA_KEEP  "5356800"      /* 62 days after a period */


static const char  ngx_http_quota_charge_text[] =

"local acct, base = KEYS[1], ARGV[1]\n"
"local peek = ARGV[2] == '1'\n"
"local now_ms = tonumber(ARGV[3])\n"
"local now = math.floor(now_ms / 1000)\n"
"local keep = " NGX_HTTP_QUOTA_KEEP "\n"
"local k = tonumber(ARGV[17])\n"
"local names, costs, argcost, daily = {}, {}, {}, {}\n"
"local pos = 18\n"
"for i = 1, k do\n"
"  names[i] = ARGV[pos]\n"
"  argcost[i] = ARGV[pos + 1]\n"
"  costs[i] = tonumber(ARGV[pos + 1])\n"
"  daily[i] = ARGV[pos + 2] == 'd'\n"
"  pos = pos + 3\n"
"end\n"

/* the account: one read for everything the decision needs */
"local fields = {'plan', 'seats', 'status', 'overage', 'cap', 'anchor',\n"
"                'next_plan', 'next_plan_at'}\n"
"for i = 1, k do fields[8 + i] = 'limit:' .. names[i] end\n"
"local a = redis.call('HMGET', acct, unpack(fields))\n"

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

"if ARGV[4] == '1' and redis.call('EXISTS', acct) == 0 then\n"
"  return finish(5, 0, 0)\n"
"end\n"

/* the plan: a scheduled change applies from its instant on */
"local plan_name = a[1]\n"
"local at = tonumber(a[8])\n"
"if a[7] and at and now >= at then plan_name = a[7] end\n"
"local np = tonumber(ARGV[pos])\n"
"pos = pos + 1\n"
"local per = 7 + 3 * k\n"
"local p_at\n"
"for j = 1, np do\n"
"  if ARGV[pos + (j - 1) * per] == plan_name then\n"
"    p_at = pos + (j - 1) * per\n"
"    p_idx = j\n"
"    break\n"
"  end\n"
"end\n"
"if not p_at and tonumber(ARGV[16]) > 0 then\n"
"  p_idx = tonumber(ARGV[16])\n"
"  p_at = pos + (p_idx - 1) * per\n"
"end\n"
"local grace, rate, rate_ms, burst, conc, lease = 0, 0, 0, 0, 0, 0\n"
"if p_at then\n"
"  grace = tonumber(ARGV[p_at + 1])\n"
"  rate = tonumber(ARGV[p_at + 2])\n"
"  rate_ms = tonumber(ARGV[p_at + 3])\n"
"  burst = tonumber(ARGV[p_at + 4])\n"
"  conc = tonumber(ARGV[p_at + 5])\n"
"  lease = tonumber(ARGV[p_at + 6])\n"
"end\n"

/* the billing month of the account's anchor (quota_period_from_calendar) */
"local anchor = math.floor(tonumber(a[6]) or 1)\n"
"if anchor < 1 then anchor = 1 elseif anchor > 31 then anchor = 31 end\n"
"local function clamped(i)\n"
"  local d = anchor\n"
"  local days = tonumber(ARGV[9 + i])\n"
"  if d > days then d = days end\n"
"  return tonumber(ARGV[6 + i]) + (d - 1) * 86400, d\n"
"end\n"
"local here, here_day = clamped(1)\n"
"local start\n"
"if now >= here then\n"
"  pstart = here\n"
"  pend = clamped(2)\n"
"  start = ARGV[13] .. '-' .. string.format('%02d', here_day)\n"
"else\n"
"  local day\n"
"  pstart, day = clamped(0)\n"
"  pend = here\n"
"  start = ARGV[12] .. '-' .. string.format('%02d', day)\n"
"end\n"
"local usage_key = base .. 'usage:' .. start\n"
"local day_key = base .. 'usage:' .. ARGV[14]\n"
"local daily_key = base .. 'daily:' .. start\n"

/* limits and usage */
"local seats = tonumber(a[2]) or 1\n"
"if seats < 0 then seats = 0 end\n"
"local trial = a[3] == 'trial'\n"
"local overage = a[4] == '1'\n"
"local enforce, price, over = {}, {}, {}\n"
"for i = 1, k do\n"
"  used[i] = tonumber(redis.call('HGET', daily[i] and day_key or usage_key,\n"
"                                names[i])) or 0\n"
"  local custom = tonumber(a[8 + i])\n"
"  local lim = -1\n"
"  price[i] = -1\n"
"  if p_at then\n"
"    local o = p_at + 7 + (i - 1) * 3\n"
"    lim = tonumber(ARGV[o])\n"
"    if lim >= 0 and ARGV[o + 1] == '1' then lim = lim * seats end\n"
"    price[i] = tonumber(ARGV[o + 2])\n"
"  end\n"
"  if custom and custom >= 0 then lim = math.floor(custom) end\n"
"  limits[i] = lim\n"
"  enforce[i] = lim\n"
"  if lim >= 0 then enforce[i] = math.floor(lim * (100 + grace) / 100) end\n"
"  over[i] = 0\n"
"end\n"

"if a[3] == 'suspended' then return finish(4, 0, 0) end\n"
"if peek then return finish(1, 0, 0) end\n"

/* rate: GCRA, a burst of B at once, then one per interval */
"local tat_new\n"
"if rate > 0 then\n"
"  local interval = rate_ms / rate\n"
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

/* quota: grace, or overage units past the limit when overage is on */
"local add_cost = 0\n"
"if not trial then\n"
"  for i = 1, k do\n"
"    if limits[i] >= 0 then\n"
"      if overage and price[i] >= 0 and not daily[i] then\n"
"        local before = math.max(0, used[i] - limits[i])\n"
"        over[i] = math.max(0, used[i] + costs[i] - limits[i]) - before\n"
"        add_cost = add_cost + over[i] * price[i]\n"
"      elseif used[i] + costs[i] > enforce[i] then\n"
"        return finish(2, i, 0)\n"
"      end\n"
"    end\n"
"  end\n"
"  local cap = tonumber(a[5])\n"
"  if overage and cap and k > 0 then\n"
"    cap = math.floor(cap * 1000000 + 0.5)\n"
"    local spent = tonumber(redis.call('HGET', usage_key, 'overage_cost')) or 0\n"
"    if (spent > 0 and spent >= cap) or spent + add_cost > cap then\n"
"      return finish(3, 0, 0)\n"
"    end\n"
"  end\n"
"end\n"

/* admitted: write everything */
"if tat_new then\n"
"  redis.call('SET', base .. 'rate', tat_new, 'PX',\n"
"             math.ceil(tat_new - now_ms) + 1000)\n"
"end\n"
"if take_slot then\n"
"  slot = 1\n"
"  redis.call('ZADD', ckey, now_ms + lease, ARGV[5])\n"
"  redis.call('PEXPIRE', ckey, lease + 1000)\n"
"end\n"
"local ttl = pend - now + keep\n"
"local charged = false\n"
"for i = 1, k do\n"
"  if costs[i] > 0 then\n"
"    charged = true\n"
"    local key = daily[i] and day_key or usage_key\n"
"    used[i] = redis.call('HINCRBY', key, names[i], argcost[i])\n"
"    if daily[i] then\n"
"      redis.call('EXPIRE', key, tonumber(ARGV[15]) - now + keep)\n"
"    end\n"
"    redis.call('HINCRBY', daily_key, names[i] .. ':' .. ARGV[14],\n"
"               argcost[i])\n"
"    if over[i] > 0 then\n"
"      redis.call('HINCRBY', usage_key, names[i] .. ':overage', over[i])\n"
"    end\n"
"  end\n"
"end\n"
"if add_cost > 0 then\n"
"  redis.call('HINCRBY', usage_key, 'overage_cost', add_cost)\n"
"end\n"
"if charged then\n"
"  redis.call('EXPIRE', usage_key, ttl)\n"
"  redis.call('EXPIRE', daily_key, ttl)\n"
"end\n"
"return finish(1, 0, 0)\n";


/*
 * quota_reconcile, after the response: add DELTA (actual - estimate, may
 * be negative) to a metric charged by this request.  A refund never takes a
 * counter below zero.  Units that move across the limit of an account with
 * overage on are priced (or refunded) like the charge would have; the cap
 * is not checked: the request was admitted already.
 *
 * KEYS[1] P{T}:account;  ARGV: usage key, daily key, METRIC, DELTA,
 * "METRIC:YYYY-MM-DD", LIMIT (-1: none), PRICE (micro-USD, -1: none)
 */
static const char  ngx_http_quota_reconcile_text[] =

"local delta = tonumber(ARGV[4])\n"
"local used = tonumber(redis.call('HGET', ARGV[1], ARGV[3])) or 0\n"
"if used + delta < 0 then delta = -used end\n"
"if delta == 0 then return used end\n"
"local day = tonumber(redis.call('HGET', ARGV[2], ARGV[5])) or 0\n"
"local dd = delta\n"
"if day + dd < 0 then dd = -day end\n"
"if dd ~= 0 then redis.call('HINCRBY', ARGV[2], ARGV[5], dd) end\n"
"local limit, price = tonumber(ARGV[6]), tonumber(ARGV[7])\n"
"if limit >= 0 and price >= 0 then\n"
"  local a = redis.call('HMGET', KEYS[1], 'overage', 'status')\n"
"  if a[1] == '1' and a[2] ~= 'trial' then\n"
"    local over = math.max(0, used + delta - limit) - math.max(0, used - limit)\n"
"    if over ~= 0 then\n"
"      redis.call('HINCRBY', ARGV[1], ARGV[3] .. ':overage', over)\n"
"      redis.call('HINCRBY', ARGV[1], 'overage_cost', over * price)\n"
"    end\n"
"  end\n"
"end\n"
"return redis.call('HINCRBY', ARGV[1], ARGV[3], delta)\n";


const ngx_str_t  ngx_http_quota_charge_lua = {
    sizeof(ngx_http_quota_charge_text) - 1,
    (u_char *) ngx_http_quota_charge_text
};

const ngx_str_t  ngx_http_quota_reconcile_lua = {
    sizeof(ngx_http_quota_reconcile_text) - 1,
    (u_char *) ngx_http_quota_reconcile_text
};
