-- flexitasks limits: one provider's rpm, tpm and in-flight limits as one atomic step.
--
-- A port of flexitasks/limits/machine.py, gcra.py and leases.py (the rules live there;
-- change both together, tests/test_limits_model.py compares them step by step).
-- Loaded once by redis_backend.py (SCRIPT LOAD / EVALSHA), after the prelude
-- flexitasks/script_clock.lua (fmt, finite, clock). Nothing else writes these keys.
--
--   check | finish
--     KEYS[1] hash {rpm_tat, tpm_tat}, KEYS[2] sorted set lease -> expiry
--     ARGV: op, now ('' = Redis TIME), rpm, burst, tpm, max_in_flight, lease_ttl, lease,
--           check: tokens, max_wait | finish: reserved, actual
--     a limit given as '' is off; actual '' = unknown (the reservation stands).
--     Reply: allowed (2 = booked: the slot after the wait is taken), reserved,
--            rpm_wait, tpm_wait, in_flight_wait ('' = that limit admits),
--            then the provider's state as peek gives it.  (finish: allowed = 1, no waits)
--   peek
--     KEYS: hash1, leases1, hash2, leases2, ...; ARGV: op, now. Writes nothing.
--     Reply per provider: rpm_tat, tpm_tat, in_flight, now, skips of rpm, tpm, in_flight.
-- The hash also counts refusals ('skip:<limit>', under the first limit refusing).
-- Floats travel as strings (a Lua number reply would be cut to an integer).

local STATE_TTL = 86400

local function bad(msg)
  return redis.error_reply('LIMITS_BADARG ' .. msg)
end

-- gcra.admit
local function admit(tat, now, per_minute, depth, cost)
  local interval = 60.0 / per_minute
  local new_tat = math.max(tat, now) + cost * interval
  local over = new_tat - now - depth * interval
  if over <= 0 then return true, new_tat, 0 end
  return false, new_tat, over
end

local function load(hkey)
  local v = redis.call('HMGET', hkey, 'rpm_tat', 'tpm_tat')
  return tonumber(v[1]) or 0, tonumber(v[2]) or 0
end

local function live(lkey, now)
  return redis.call('ZCOUNT', lkey, '(' .. fmt(now), '+inf')
end

local function state(hkey, lkey, rpm_tat, tpm_tat, now)
  local k = redis.call('HMGET', hkey, 'skip:rpm', 'skip:tpm', 'skip:in_flight')
  return {fmt(rpm_tat), fmt(tpm_tat), live(lkey, now), fmt(now),
          tonumber(k[1]) or 0, tonumber(k[2]) or 0, tonumber(k[3]) or 0}
end

local function reply(head, hkey, lkey, rpm_tat, tpm_tat, now)
  local tail = state(hkey, lkey, rpm_tat, tpm_tat, now)
  for i = 1, #tail do head[#head + 1] = tail[i] end
  return head
end

local op = ARGV[1]
local now = clock(ARGV[2])
if now == nil then return bad(tostring(op) .. ': now is not a finite number') end

if op == 'peek' then
  local out = {}
  for i = 1, #KEYS, 2 do
    local rpm_tat, tpm_tat = load(KEYS[i])
    out[#out + 1] = state(KEYS[i], KEYS[i + 1], rpm_tat, tpm_tat, now)
  end
  return out
end

if op ~= 'check' and op ~= 'finish' then return bad('unknown operation ' .. string.format('%q', tostring(op))) end
if #KEYS ~= 2 or #ARGV < 9 then return bad(op .. ': expected 2 keys and >= 9 args') end

local function limit(i)
  if ARGV[i] == '' then return nil, true end
  local x = finite(ARGV[i])
  return x, x ~= nil and x > 0
end
local rpm, ok1 = limit(3)
local burst = finite(ARGV[4])
local tpm, ok2 = limit(5)
local cap, ok3 = limit(6)
local lease_ttl = finite(ARGV[7])
local lease = ARGV[8]
if not (ok1 and ok2 and ok3) or burst == nil or burst <= 0 or lease_ttl == nil or lease_ttl <= 0 then
  return bad(op .. ': policy malformed')
end
if lease == nil or lease == '' then return bad(op .. ': empty lease id') end

local hkey, lkey = KEYS[1], KEYS[2]
local rpm_tat, tpm_tat = load(hkey)
redis.call('ZREMRANGEBYSCORE', lkey, '-inf', fmt(now))  -- leases.prune: expiry <= now is gone

if op == 'finish' then
  local reserved = tonumber(ARGV[9])
  local actual = ARGV[10]
  if reserved == nil or reserved < 0 then return bad('finish: reserved malformed') end
  redis.call('ZREM', lkey, lease)
  if tpm ~= nil and actual ~= nil and actual ~= '' then
    local a = tonumber(actual)
    if a == nil or a < 0 then return bad('finish: actual malformed') end
    tpm_tat = tpm_tat + (a - reserved) * (60.0 / tpm)  -- gcra.settle
    redis.call('HSET', hkey, 'tpm_tat', fmt(tpm_tat))
    redis.call('EXPIRE', hkey, STATE_TTL)
  end
  return reply({1, 0, '', '', ''}, hkey, lkey, rpm_tat, tpm_tat, now)
end

-- check
local tokens = tonumber(ARGV[9])
if tokens == nil or tokens < 0 or tokens ~= math.floor(tokens) then return bad('check: tokens malformed') end
local max_wait = finite(ARGV[10] or '0')
if max_wait == nil then return bad('check: max_wait malformed') end
local waits = {'', '', ''}
local refused = false
local new_rpm, new_tpm, reserved = rpm_tat, tpm_tat, 0
local ok, wait
if rpm ~= nil then
  ok, new_rpm, wait = admit(rpm_tat, now, rpm, burst, 1.0)
  if not ok then waits[1] = fmt(wait); refused = true end
end
if tpm ~= nil then
  reserved = math.min(tokens, tpm)
  ok, new_tpm, wait = admit(tpm_tat, now, tpm, tpm, reserved)
  if not ok then waits[2] = fmt(wait); refused = true end
end
local longest = 0
if waits[1] ~= '' then longest = math.max(longest, tonumber(waits[1])) end
if waits[2] ~= '' then longest = math.max(longest, tonumber(waits[2])) end
if cap ~= nil then
  local held = redis.call('ZCARD', lkey)
  if held >= cap then
    local first = redis.call('ZRANGE', lkey, 0, 0, 'WITHSCORES')
    waits[3] = fmt(tonumber(first[2]) - now)
    refused = true
  end
end
-- machine.check: book the slot after the wait (rpm/tpm only; a lease cannot start later)
if refused and cap == nil and longest <= max_wait then
  redis.call('HSET', hkey, 'rpm_tat', fmt(new_rpm), 'tpm_tat', fmt(new_tpm))
  redis.call('EXPIRE', hkey, STATE_TTL)
  return reply({2, reserved, waits[1], waits[2], waits[3]}, hkey, lkey, new_rpm, new_tpm, now)
end
if refused then
  local names = {'rpm', 'tpm', 'in_flight'}
  for i = 1, 3 do
    if waits[i] ~= '' then redis.call('HINCRBY', hkey, 'skip:' .. names[i], 1); break end
  end
  redis.call('EXPIRE', hkey, STATE_TTL)
  return reply({0, 0, waits[1], waits[2], waits[3]}, hkey, lkey, rpm_tat, tpm_tat, now)
end
if rpm ~= nil or tpm ~= nil then
  redis.call('HSET', hkey, 'rpm_tat', fmt(new_rpm), 'tpm_tat', fmt(new_tpm))
  redis.call('EXPIRE', hkey, STATE_TTL)
end
if cap ~= nil then
  redis.call('ZADD', lkey, fmt(now + lease_ttl), lease)
  redis.call('EXPIRE', lkey, math.ceil(lease_ttl) + 60)
end
return reply({1, reserved, '', '', ''}, hkey, lkey, new_rpm, new_tpm, now)
