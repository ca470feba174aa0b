-- The void of a charge whose outcome the gateway does not know (it timed
-- out, the client went away, the connection dropped, the script failed):
-- idempotent, sent until Redis answers it.  If the charge ran, its record
-- says what it wrote and that is undone (costs, daily, overage units and
-- cost, the GCRA step); in any case the record becomes a tombstone, so a
-- charge that runs later (it was still queued in Redis) writes nothing,
-- and the in-flight slot named by the charge id is removed.  Alerts the
-- charge fired stay.
--
-- KEYS: VKEY_* of protocol.def, the charge's own KEYS (every key the void
-- touches is declared: the record P{T}:c:ID, the bucket P{T}:r:BUCKET of
-- the charge's clock, the usage and daily hashes of its period, rate,
-- inflight); ARGV: VOID_ID the charge id.  The record is KEYS[VKEY_RECORD]
-- for a lease or a forced charge, else the field ID of KEYS[VKEY_BUCKET].
-- The record (charge.lua): "START TODAY GCRA_STEP OVERAGE_COST N", then
-- per charged metric "NAME COST m|d OVERAGE_UNITS PRICE LIMIT"; a settled
-- lease's record is already the tombstone: nothing to undo.  As in the
-- settle, overage goes back against the counter as it is now (LIMIT >= 0:
-- max(0, U - LIMIT) - max(0, U - COST - LIMIT) units at PRICE), so that a
-- late void leaves overage = max(0, used - LIMIT) at rest.  Returns 1
-- (undone), 0 (nothing to undo), -1 (the record's period is not the one
-- of KEYS: nothing undone).
local rec = redis.call('GET', KEYS[VKEY_RECORD])
redis.call('SET', KEYS[VKEY_RECORD], 'v', 'EX', TOMBSTONE_TTL)
redis.call('ZREM', KEYS[VKEY_INFLIGHT], ARGV[VOID_ID])
if rec == 'v' then return 0 end
local id, u = ARGV[VOID_ID], KEYS[VKEY_USAGE]
local h
if not rec then
  h = KEYS[VKEY_BUCKET]
  rec = redis.call('HGET', h, id)
  if not rec then return 0 end
end
-- sent with every void (EVAL): kept short
local w = {}
for x in rec:gmatch('%S+') do w[#w + 1] = x end
if u:sub(-#w[1]) ~= w[1] then return -1 end
if h then redis.call('HDEL', h, id) end
local function add(k, f, v)
  redis.pcall('HINCRBY', k, f, ('%d'):format(v))
end
local function get(f) return tonumber(redis.pcall('HGET', u, f)) or 0 end
if w[3] ~= '0' then
  local t = tonumber(redis.pcall('GET', KEYS[VKEY_RATE]))
  if t then redis.pcall('SET', KEYS[VKEY_RATE], t - w[3], 'KEEPTTL') end
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
  add(KEYS[VKEY_DAILY], m .. ':' .. w[2], -c)
end
if back > 0 then add(u, 'overage_cost', -back) end
return 1
