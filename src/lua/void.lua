-- The void of a charge whose outcome the gateway does not know (it timed
-- out, the client went away, the connection dropped, the script failed):
-- idempotent, sent until Redis answers it.  If the charge ran, its record
-- says what it wrote and that is undone (costs, daily, overage units and
-- cost, the GCRA step); in any case the record becomes a tombstone, so a
-- charge that runs later (it was still queued in Redis) writes nothing,
-- and the in-flight slot named by the charge id is removed.  Alerts the
-- charge fired stay.
--
-- KEYS[1] P{T}:c:ID; ARGV: VOID_BASE "P{T}:", VOID_ID the charge id,
-- VOID_NOW_MS the charge's ARG_NOW_MS.  The record is KEYS[1] for a lease
-- or a forced charge, else the field ID of P{T}:r:BUCKET (charge.lua).
-- The record (charge.lua): "START TODAY GCRA_STEP OVERAGE_COST N", then
-- per charged metric "NAME COST m|d OVERAGE_UNITS PRICE LIMIT"; a settled
-- lease's record is already the tombstone: nothing to undo.  As in the
-- settle, overage goes back against the counter as it is now (LIMIT >= 0:
-- max(0, U - LIMIT) - max(0, U - COST - LIMIT) units at PRICE), so that a
-- late void leaves overage = max(0, used - LIMIT) at rest.
local rec = redis.call('GET', KEYS[1])
local base = ARGV[VOID_BASE]
redis.call('SET', KEYS[1], 'v', 'EX', TOMBSTONE_TTL)
redis.call('ZREM', base .. 'inflight', ARGV[VOID_ID])
if rec == 'v' then return 0 end
if not rec then
  local bucket = base .. 'r:'
                 .. math.floor(tonumber(ARGV[VOID_NOW_MS]) / RECORD_BUCKET_MS)
  rec = redis.call('HGET', bucket, ARGV[VOID_ID])
  if not rec then return 0 end
  redis.call('HDEL', bucket, ARGV[VOID_ID])
end
local w = {}
for x in string.gmatch(rec, '%S+') do w[#w + 1] = x end
local usage_key = base .. 'usage:' .. w[1]
local daily_key = base .. 'daily:' .. w[1]
if w[3] ~= '0' then
  local tat = tonumber(redis.pcall('GET', base .. 'rate'))
  if tat then
    redis.pcall('SET', base .. 'rate', tat - tonumber(w[3]), 'KEEPTTL')
  end
end
local cost_back = 0
for j = 6, #w - 5, 6 do
  local name, cost = w[j], tonumber(w[j + 1])
  local lim = tonumber(w[j + 5])
  if lim >= 0 then
    local u = tonumber(redis.pcall('HGET', usage_key, name)) or 0
    local over = math.max(0, u - lim) - math.max(0, u - cost - lim)
    over = math.min(over, tonumber(redis.pcall('HGET', usage_key,
                                               name .. ':overage')) or 0)
    if over > 0 then
      redis.pcall('HINCRBY', usage_key, name .. ':overage',
                  string.format('%d', -over))
      cost_back = cost_back + over * tonumber(w[j + 4])
    end
  end
  if w[j + 2] ~= 'd' then
    redis.pcall('HINCRBY', usage_key, name, '-' .. w[j + 1])
  end
  redis.pcall('HINCRBY', daily_key, name .. ':' .. w[2], '-' .. w[j + 1])
end
if cost_back > 0 then
  cost_back = math.min(cost_back, tonumber(redis.pcall('HGET', usage_key,
                                                       'overage_cost')) or 0)
end
if cost_back > 0 then
  redis.pcall('HINCRBY', usage_key, 'overage_cost',
              string.format('%d', -cost_back))
end
return 1
