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
local b = ARGV[VOID_BASE]
redis.call('SET', KEYS[1], 'v', 'EX', TOMBSTONE_TTL)
redis.call('ZREM', b .. 'inflight', ARGV[VOID_ID])
if rec == 'v' then return 0 end
local id = ARGV[VOID_ID]
if not rec then
  local h = b .. 'r:' .. math.floor(ARGV[VOID_NOW_MS] / RECORD_BUCKET_MS)
  rec = redis.call('HGET', h, id)
  if not rec then return 0 end
  redis.call('HDEL', h, id)
end
-- sent with every void (EVAL): kept short
local w = {}
for x in rec:gmatch('%S+') do w[#w + 1] = x end
local u = b .. 'usage:' .. w[1]
local function add(k, f, v)
  redis.pcall('HINCRBY', k, f, ('%d'):format(v))
end
local function get(f) return tonumber(redis.pcall('HGET', u, f)) or 0 end
if w[3] ~= '0' then
  local t = tonumber(redis.pcall('GET', b .. 'rate'))
  if t then redis.pcall('SET', b .. 'rate', t - w[3], 'KEEPTTL') end
end
local back = 0
for j = 6, #w - 5, 6 do
  local m, c, l = w[j], tonumber(w[j + 1]), tonumber(w[j + 5])
  if l >= 0 then
    local n = get(m)
    local o = math.min(math.max(0, n - l) - math.max(0, n - c - l),
                       get(m .. ':overage'))
    if o > 0 then
      add(u, m .. ':overage', -o)
      back = back + o * w[j + 4]
    end
  end
  if w[j + 2] ~= 'd' then add(u, m, -c) end
  add(b .. 'daily:' .. w[1], m .. ':' .. w[2], -c)
end
if back > 0 then add(u, 'overage_cost', -back) end
return 1
