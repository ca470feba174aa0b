-- The hand-written alternative's nginx side (arm (c) of scripts/bench):
-- what a team would write with access_by_lua_block and lua-resty-redis
-- instead of ngx_http_quota_module.  Same contract for the benchmark path:
-- POST /api/** costs 1 api_requests, tenant from X-API-Key, 402 JSON when
-- over the plan limit, X-Quota-* headers, fail open when Redis is down.
--
--   init_by_lua_block { require("quota_access").init{ host=, port=,
--                       script=PATH, default_plan=, plans={NAME=LIMIT} } }
--   access_by_lua_block { require("quota_access").charge() }

local redis = require "nginx.redis"     -- Debian's lua-nginx-redis (resty.redis)

local M = {}

local host, port, script, sha, default_plan
local plan_args = {}
local TTL = 93 * 86400                  -- a period plus two months, like the module
local METRIC = "api_requests"

local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

function M.init(cfg)
  host, port, default_plan = cfg.host, cfg.port, cfg.default_plan
  local f = assert(io.open(cfg.script, "rb"))
  script = f:read("*a")
  f:close()
  sha = hex(ngx.sha1_bin(script))       -- EVALSHA sends 40 bytes, not the script
  for name, limit in pairs(cfg.plans) do
    plan_args[#plan_args + 1] = name
    plan_args[#plan_args + 1] = limit
  end
end

-- dates change once a second at most: format them once per second
local now_cached, period, today, reset
local function clock()
  local now = ngx.time()
  if now ~= now_cached then
    local t = os.date("!*t", now)
    local ny, nm = t.year, t.month + 1
    if nm == 13 then ny, nm = ny + 1, 1 end
    period = string.format("%04d-%02d-01", t.year, t.month)
    today = string.format("%04d-%02d-%02d", t.year, t.month, t.day)
    reset = string.format("%04d-%02d-01T00:00:00Z", ny, nm)
    now_cached = now
  end
end

function M.charge()
  if ngx.req.get_method() ~= "POST" or ngx.var.uri:sub(1, 5) ~= "/api/" then
    return
  end
  local tenant = ngx.var.http_x_api_key
  if not tenant or tenant == "" then return end
  if tenant:find("[{}%c ]") or #tenant > 256 then
    return ngx.exit(400)                -- would break the {T} hash tag
  end

  clock()
  local base = "quota:{" .. tenant .. "}:"

  local red = redis:new()
  red:set_timeout(100)                  -- Debian ships 0.27: no set_timeouts()
  local ok, err = red:connect(host, port)   -- reuses a pooled connection
  if not ok then
    ngx.log(ngx.WARN, "quota: redis connect: ", err)
    return                                  -- fail open
  end

  local res
  res, err = red:evalsha(sha, 3, base .. "account", base .. "usage:" .. period,
                         base .. "daily:" .. period, METRIC, 1,
                         METRIC .. ":" .. today, TTL, default_plan,
                         unpack(plan_args))
  if not res and err and err:find("NOSCRIPT", 1, true) then
    res, err = red:eval(script, 3, base .. "account", base .. "usage:" .. period,
                        base .. "daily:" .. period, METRIC, 1,
                        METRIC .. ":" .. today, TTL, default_plan,
                        unpack(plan_args))
  end
  if not res then
    red:close()
    ngx.log(ngx.WARN, "quota: redis: ", err)
    return
  end
  red:set_keepalive(60000, 64)

  local admitted, used, limit = res[1], res[2], res[3]
  local h = ngx.header
  h["X-Quota-Limit"] = limit
  h["X-Quota-Remaining"] = math.max(0, limit - used)
  h["X-Quota-Used"] = used
  h["X-Quota-Reset"] = reset

  if admitted == 0 then
    ngx.status = 402
    h["Content-Type"] = "application/json"
    ngx.print(string.format('{"error":"QUOTA_EXCEEDED","message":"Monthly %s'
      .. ' quota exhausted. Quota resets on %s.","metric":"%s",'
      .. '"current_usage":%d,"quota_limit":%d,"quota_reset_date":"%s"}\n',
      METRIC, reset:sub(1, 10), METRIC, used, limit, reset))
    return ngx.exit(402)
  end
end

return M
