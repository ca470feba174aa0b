-- quota_reconcile, after the response: add DELTA (actual - estimate, may
-- be negative) to a metric charged by this request.  A refund never takes
-- a counter below zero, and no counter passes 2^53 - 1.  Units that move
-- across the limit of an account with overage on are priced (or refunded)
-- like the charge would have; the cap is not checked: the request was
-- admitted already.  A key or field it creates gets its TTL, and a line it
-- crosses upwards fires its alert, as a charge would (once per period).
--
-- KEYS: the RKEY_* of protocol.def, every key it touches (the counter's
-- hash, the daily hash, the alert marks and stream: the charge's period,
-- named by C from the charge's reply); ARGV: the RC_* positions (a
-- period=day metric: KEYS[RKEY_COUNTER] = KEYS[RKEY_DAILY] and RC_FIELD =
-- RC_DAILY_FIELD).
local MAXI = 9007199254740991
local ckey, dkey = KEYS[RKEY_COUNTER], KEYS[RKEY_DAILY]
local field, dfield = ARGV[RC_FIELD], ARGV[RC_DAILY_FIELD]
local delta = tonumber(ARGV[RC_DELTA])
local used = tonumber(redis.call('HGET', ckey, field)) or 0
if used + delta < 0 then delta = -used end
if used + delta > MAXI then delta = MAXI - used end
if delta == 0 then return used end
local limit, price = tonumber(ARGV[RC_LIMIT]), tonumber(ARGV[RC_PRICE])
local function int(n) return string.format('%d', n) end
if ckey ~= dkey or field ~= dfield then
  local day = tonumber(redis.call('HGET', dkey, dfield)) or 0
  local dd = delta
  if day + dd < 0 then dd = -day end
  if dd ~= 0 then
    redis.call('HINCRBY', dkey, dfield, int(dd))
    if day == 0 then redis.call('EXPIRE', dkey, ARGV[RC_DAILY_TTL]) end
  end
end
local over = 0
if limit >= 0 and price >= 0 then
  local a = redis.call('HMGET', KEYS[RKEY_ACCOUNT], 'overage', 'status')
  if a[1] == '1' and a[2] ~= 'trial' then
    over = math.max(0, used + delta - limit) - math.max(0, used - limit)
    if over ~= 0 and math.abs(over * price) <= MAXI then
      redis.call('HINCRBY', ckey, field .. ':overage', int(over))
      redis.call('HINCRBY', ckey, 'overage_cost', int(over * price))
    end
  end
end
local new = redis.call('HINCRBY', ckey, field, int(delta))
if used == 0 then redis.call('EXPIRE', ckey, ARGV[RC_TTL]) end
local function alert(kind)
  local metric = ARGV[RC_METRIC]
  if redis.call('HSETNX', KEYS[RKEY_MARKS],
                kind .. ':' .. metric .. ARGV[RC_MARK_SUFFIX], 1) == 0
  then
    return
  end
  redis.call('EXPIRE', KEYS[RKEY_MARKS], ARGV[RC_DAILY_TTL])
  local t, ch, n, reset =
    string.match(ARGV[RC_NOTIFY], '^(.-)\n(.-)\n(.-)\n(.*)$')
  redis.call('XADD', KEYS[RKEY_ALERTS], 'MAXLEN', '~', 1000, '*',
             'type', kind, 'metric', metric, 'used', new, 'limit', limit,
             'at', n)
  if tonumber(ARGV[RC_EVENTS]) == EVENTS_OFF then return end
  local pc = 0
  if limit > 0 then pc = math.floor(new * 100 / limit)
  elseif new > 0 then pc = 100 end
  local function num(v) return '\1' .. int(v) end
  local e = cjson.encode({type = 'alert', alert_type = kind,
    tenant_id = t, metric = metric, used = num(new), limit = num(limit),
    remaining = num(math.max(0, limit - new)), percent = num(pc),
    quota_reset_date = reset, timestamp = n})
  -- numbers as digits, not cjson's 14 (S5)
  redis.call('PUBLISH', ch, (string.gsub(e, '"\\u0001(%-?%d+)"', '%1')))
end
if limit >= 0 and delta > 0 then
  local line = limit * tonumber(ARGV[RC_THRESHOLD])
  if new * 100 >= line and used * 100 < line then
    alert('approaching_limit')
  end
  if new >= limit and used < limit then alert('quota_exceeded') end
  if over > 0 and used <= limit then alert('overage_started') end
end
return new
