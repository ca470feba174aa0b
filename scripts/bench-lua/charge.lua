-- The hand-written alternative's Redis side (arm (c) of scripts/bench):
-- an atomic check-and-charge run with EVALSHA, writing the same keys as
-- ngx_http_quota_module so both arms do comparable work in Redis.
--
-- KEYS  1 P{T}:account      (hash, field "plan", written by the backend)
--       2 P{T}:usage:START  (hash, field METRIC)
--       3 P{T}:daily:START  (hash, field METRIC:YYYY-MM-DD)
-- ARGV  1 METRIC  2 COST  3 "METRIC:YYYY-MM-DD"  4 TTL seconds
--       5 default plan, then pairs: PLAN, LIMIT
-- Reply { admitted 1|0, used, limit }  (used: after the charge if admitted)

-- the account's plan; no account, or a plan nginx does not know: the default
local function plan_limit(name)
  for i = 6, #ARGV, 2 do
    if ARGV[i] == name then return tonumber(ARGV[i + 1]) end
  end
end
local limit = plan_limit(redis.call('HGET', KEYS[1], 'plan'))
                or plan_limit(ARGV[5]) or -1

local cost = tonumber(ARGV[2])
local used = tonumber(redis.call('HGET', KEYS[2], ARGV[1])) or 0
if limit >= 0 and used + cost > limit then
  return {0, used, limit}
end

used = redis.call('HINCRBY', KEYS[2], ARGV[1], cost)
redis.call('HINCRBY', KEYS[3], ARGV[3], cost)
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return {1, used, limit}
