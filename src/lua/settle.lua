-- The settle of a lease (SPEC 9): give back the request units a node did
-- not spend, from the grant's record P{T}:c:ID (charge.lua).  R units of a
-- lease of N return R x COST / N of each metric: from the period's usage
-- (monthly metrics) and from the daily field of the grant's day.  Overage
-- is given back against the counter U as it is now, not against the
-- lease's own overage units: leases of other keys and nodes may have been
-- charged past the limit L after this one, and at rest the overage units
-- must be max(0, used - L), as the exact path keeps them.  So the units
-- going back are overage for max(0, U - L) - max(0, U - R x c - L) of
-- them (never more than the overage units counted), each priced at the
-- grant's recorded PRICE off the overage cost.  The record then becomes
-- the tombstone, so a resend, a second settle or a void after it does
-- nothing.  Alerts the grant fired stay.
--
-- KEYS: SKEY_* of protocol.def, the grant's record P{T}:c:ID and the
-- usage and daily hashes of its period (named by the gateway from the
-- grant's reply: every key the script touches is declared); ARGV:
-- SETTLE_UNITS R.  Returns the units given back (0: no record, or settled
-- or voided; -1: the record's period is not the one of KEYS, nothing done).
local rec = redis.call('GET', KEYS[SKEY_RECORD])
if not rec or rec == 'v' then return 0 end
local w = {}
for x in string.gmatch(rec, '%S+') do w[#w + 1] = x end
if string.sub(KEYS[SKEY_USAGE], -#w[1]) ~= w[1] then return -1 end
redis.call('SET', KEYS[SKEY_RECORD], 'v', 'EX', TOMBSTONE_TTL)
local n = tonumber(w[5])
local back = math.min(math.max(math.floor(tonumber(ARGV[SETTLE_UNITS])), 0),
                      n)
if back == 0 then return 0 end
local function int(v) return string.format('%d', v) end
local usage_key, daily_key = KEYS[SKEY_USAGE], KEYS[SKEY_DAILY]
local cost_back = 0
for j = 6, #w - 5, 6 do
  local name = w[j]
  local units = tonumber(w[j + 1]) / n * back
  local lim = tonumber(w[j + 5])
  if lim >= 0 then
    -- the counter before this settle; absent or not a number: nothing
    -- past the limit to give back
    local u = tonumber(redis.pcall('HGET', usage_key, name)) or 0
    local over = math.max(0, u - lim) - math.max(0, u - units - lim)
    over = math.min(over,
                    tonumber(redis.pcall('HGET', usage_key,
                                        name .. ':overage')) or 0)
    if over > 0 then
      redis.pcall('HINCRBY', usage_key, name .. ':overage', int(-over))
      cost_back = cost_back + over * tonumber(w[j + 4])
    end
  end
  if w[j + 2] ~= 'd' then
    redis.pcall('HINCRBY', usage_key, name, int(-units))
  end
  redis.pcall('HINCRBY', daily_key, name .. ':' .. w[2], int(-units))
end
if cost_back > 0 then
  cost_back = math.min(cost_back, tonumber(redis.pcall('HGET', usage_key,
                                                      'overage_cost')) or 0)
end
if cost_back > 0 then
  redis.pcall('HINCRBY', usage_key, 'overage_cost', int(-cost_back))
end
return back
