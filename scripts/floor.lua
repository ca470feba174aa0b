-- The floor of an exact charge, for `SCRIPT=scripts/floor.lua
-- scripts/script-cost` (DEVELOPERS.md, "Where Redis time goes"): the Redis
-- commands the data model needs for one admitted request of one metric,
-- and no decision logic: the tombstone check, the account read, the usage
-- read, the daily and usage increments, the record.  What the charge
-- script costs above this is Lua deciding (validation, plan, period,
-- alerts); this much no script over these keys can avoid.  Run after the
-- charge script's protocol prelude, on a real request's arguments.
local name = ARGV[ARG_METRICS + METRIC_NAME_OFF]
local cost = ARGV[ARG_METRICS + METRIC_COST_OFF]
if redis.call('EXISTS', KEYS[KEY_RECORD]) == 1 then return {CODE_VOIDED} end
redis.call('HMGET', KEYS[KEY_ACCOUNT], 'plan', 'seats', 'status', 'overage',
           'cap', 'anchor', 'next_plan', 'next_plan_at', 'limit:' .. name)
local used = tonumber(redis.call('HGET', KEYS[KEY_USAGE], name)) or 0
if used + tonumber(cost) > 9007199254740991 then return {CODE_RANGE} end
local day = redis.call('HINCRBY', KEYS[KEY_DAILY],
                       name .. ':' .. ARGV[ARG_TODAY], cost)
if day == tonumber(cost) then redis.call('EXPIRE', KEYS[KEY_DAILY], KEEP) end
if redis.call('HSET', KEYS[KEY_BUCKET], '_', '1', ARGV[ARG_CHARGE_ID],
              ARGV[ARG_RECORD]) == 2 then
  redis.call('PEXPIRE', KEYS[KEY_BUCKET], RECORD_BUCKET_MS + RECORD_TTL * 1000)
end
used = redis.call('HINCRBY', KEYS[KEY_USAGE], name, cost)
if used == tonumber(cost) then redis.call('EXPIRE', KEYS[KEY_USAGE], KEEP) end
-- REPLY_CODE .. REPLY_GRANTED, then (used, limit)
return {CODE_CHARGED, 0, 1, tonumber(ARGV[ARG_CUR_START]),
        tonumber(ARGV[ARG_NEXT_START]), 0, 0, 1, used, -1}
