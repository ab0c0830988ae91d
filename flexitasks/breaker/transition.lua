-- flexitasks breaker: every store operation as one atomic read-decide-write-publish.
--
-- A port of flexitasks/breaker/machine.py (the rules live there, one operation object
-- each; change both together, tests/test_breaker_store_model.py compares them step by
-- step). Loaded once by redis_store.py with SCRIPT LOAD / EVALSHA, after the prelude
-- flexitasks/script_clock.lua (fmt, finite, clock). Nothing else writes these keys.
--
-- Operations (ARGV[1]):
--   record_failure | record_success | admit | probe_result | cool_down | force
--     KEYS[1] state hash, KEYS[2] window hash
--     ARGV: op, now ('' = Redis TIME), rand, provider, channel,
--           failure_threshold, failure_rate_threshold, window, recovery_timeout,
--           max_recovery_timeout, success_threshold, jitter, probe_ttl, a1, a2
--     a1/a2: the operation's script_args(): record_*: successes | admit: owner |
--            probe_result: owner, '1'/'0' | cool_down: seconds | force: target state
--     ARGV[16]: the event secret ('' = events unsigned); used to sign, never stored
--   snapshot
--     KEYS: state1, window1, state2, window2, ...; ARGV: op, now; writes nothing.
--   fields
--     the names in REPLY (tests check them against BreakerSnapshot.REPLY_FIELDS).
-- Reply (per provider for snapshot): granted, transitioned, previous, then REPLY's
--   fields in its order. Floats are strings (a Lua number reply would be truncated to
--   an integer); '' stands for "none".

local BUCKETS = 60
local EXPONENT_CAP = 1000
-- The persisted part of the state (the hash), and the reply: BreakerSnapshot's fields.
local FIELDS = {'state', 'generation', 'open_until', 'reopen_count', 'probe_owner',
                'probe_until', 'probe_successes', 'reason'}
local REPLY = {'state', 'generation', 'open_until', 'reopen_count', 'probe_owner',
               'probe_until', 'probe_successes', 'failures', 'calls', 'reason', 'now'}

-- JSON float; cjson would print 14 significant digits (100 us at epoch scale).
local function jfloat(x)
  local s = fmt(x)
  if string.find(s, '^-?%d+$') then s = s .. '.0' end
  return s
end

local function jstr(s)
  if s == nil or s == '' then return 'null' end
  return cjson.encode(s)
end

local function bucket_of(now, window)
  return math.floor(now / (window / BUCKETS))
end

local function bkey(kind, index)
  return kind .. ':' .. string.format('%d', index)
end

local function load_state(key)
  local v = redis.call('HMGET', key, unpack(FIELDS))
  return {
    state = v[1] or 'closed',
    generation = tonumber(v[2]) or 0,
    open_until = tonumber(v[3]) or 0,
    reopen_count = tonumber(v[4]) or 0,
    probe_owner = v[5] or '',
    probe_until = tonumber(v[6]) or 0,
    probe_successes = tonumber(v[7]) or 0,
    reason = v[8] or '',
  }
end

local function save_state(key, s)
  redis.call('HSET', key,
    'state', s.state,
    'generation', string.format('%d', s.generation),
    'open_until', fmt(s.open_until),
    'reopen_count', string.format('%d', s.reopen_count),
    'probe_owner', s.probe_owner,
    'probe_until', fmt(s.probe_until),
    'probe_successes', string.format('%d', s.probe_successes),
    'reason', s.reason)
  -- No TTL: an operator's forced_open/disabled stays until reset, and a generation never
  -- restarts at 0 (processes would ignore the new events as stale). One small hash per provider.
  redis.call('PERSIST', key)
end

-- HMAC-SHA256 (Redis's Lua has SHA-1 only): signs the events this script publishes with
-- the secret passed in ARGV (never stored). LuaBitOp's 32-bit operations; sums reduced
-- with bit.tobit (exact: every sum stays far below 2^53).
local band, bor, bxor, bnot, rshift, lshift, ror, tobit =
  bit.band, bit.bor, bit.bxor, bit.bnot, bit.rshift, bit.lshift, bit.ror, bit.tobit
local SHA256_K = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}

local function sha256(msg)
  local h = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19}
  local bits = #msg * 8
  msg = msg .. '\128' .. string.rep('\0', (55 - #msg) % 64)
    .. string.char(0, 0, 0, 0) -- messages here are far below 2^32 bits
    .. string.char(band(rshift(bits, 24), 255), band(rshift(bits, 16), 255), band(rshift(bits, 8), 255),
                   band(bits, 255))
  local w = {}
  for chunk = 1, #msg, 64 do
    for j = 0, 15 do
      local b1, b2, b3, b4 = string.byte(msg, chunk + j * 4, chunk + j * 4 + 3)
      w[j] = bor(lshift(b1, 24), lshift(b2, 16), lshift(b3, 8), b4)
    end
    for j = 16, 63 do
      local x, y = w[j - 15], w[j - 2]
      local s0 = bxor(ror(x, 7), ror(x, 18), rshift(x, 3))
      local s1 = bxor(ror(y, 17), ror(y, 19), rshift(y, 10))
      w[j] = tobit(w[j - 16] + s0 + w[j - 7] + s1)
    end
    local a, b, c, d, e, f, g, hh = h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]
    for j = 0, 63 do
      local S1 = bxor(ror(e, 6), ror(e, 11), ror(e, 25))
      local ch = bxor(band(e, f), band(bnot(e), g))
      local t1 = hh + S1 + ch + SHA256_K[j + 1] + w[j]
      local S0 = bxor(ror(a, 2), ror(a, 13), ror(a, 22))
      local maj = bxor(band(a, b), band(a, c), band(b, c))
      hh, g, f, e, d, c, b, a = g, f, e, tobit(d + t1), c, b, a, tobit(t1 + S0 + maj)
    end
    h[1], h[2], h[3], h[4] = tobit(h[1] + a), tobit(h[2] + b), tobit(h[3] + c), tobit(h[4] + d)
    h[5], h[6], h[7], h[8] = tobit(h[5] + e), tobit(h[6] + f), tobit(h[7] + g), tobit(h[8] + hh)
  end
  local out = {}
  for i = 1, 8 do out[i] = bit.tohex(h[i], 8) end
  return table.concat(out)
end

local function unhex(hex)
  return (string.gsub(hex, '..', function(cc) return string.char(tonumber(cc, 16)) end))
end

local function hmac_sha256(key, msg)
  if #key > 64 then key = unhex(sha256(key)) end
  key = key .. string.rep('\0', 64 - #key)
  local ipad, opad = {}, {}
  for i = 1, 64 do
    local k = string.byte(key, i)
    ipad[i] = string.char(bxor(k, 0x36))
    opad[i] = string.char(bxor(k, 0x5c))
  end
  return sha256(table.concat(opad) .. unhex(sha256(table.concat(ipad) .. msg)))
end

-- An event as published: '{"sig":"<hex HMAC-SHA256 of the unsigned JSON>",' + the rest of it.
local function signed(body, secret)
  if secret == nil or secret == '' then return body end
  return '{"sig":"' .. hmac_sha256(secret, body) .. '",' .. string.sub(body, 2)
end

-- Window hash: 'w' = window length the buckets were counted with, 'f:<i>'/'c:<i>'.
local function load_window(key)
  local h = redis.call('HGETALL', key)
  local w = {len = 0, buckets = {}}
  for i = 1, #h, 2 do
    local k, v = h[i], h[i + 1]
    if k == 'w' then
      w.len = tonumber(v) or 0
    else
      local index = tonumber(string.sub(k, 3))
      if index ~= nil then
        local e = w.buckets[index]
        if e == nil then e = {0, 0}; w.buckets[index] = e end
        if string.sub(k, 1, 2) == 'f:' then e[1] = tonumber(v) else e[2] = tonumber(v) end
      end
    end
  end
  return w
end

local function window_counts(w, now)
  if w.len <= 0 then return 0, 0 end
  local oldest = bucket_of(now, w.len) - BUCKETS
  local f, c = 0, 0
  for index, e in pairs(w.buckets) do
    if index > oldest then f = f + e[1]; c = c + e[2] end
  end
  return f, c
end

local function window_add(key, w, window, now, df, dc)
  -- Counts already under way keep the bucket size they started with: during a rolling
  -- deploy that changes `window`, processes of either version add to the same counts
  -- instead of erasing each other's. The new length applies from the next empty window.
  if w.len > 0 then
    window = w.len
  else
    w.len = window
    w.buckets = {}
    redis.call('HSET', key, 'w', fmt(window))
  end
  local current = bucket_of(now, window)
  local stale = {}
  for index, _ in pairs(w.buckets) do
    if index <= current - BUCKETS then
      stale[#stale + 1] = bkey('f', index)
      stale[#stale + 1] = bkey('c', index)
    end
  end
  for i = 1, #stale, 2 do w.buckets[tonumber(string.sub(stale[i], 3))] = nil end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  local e = w.buckets[current]
  if e == nil then e = {0, 0}; w.buckets[current] = e end
  e[1] = e[1] + df
  e[2] = e[2] + dc
  redis.call('HINCRBY', key, bkey('f', current), df)
  redis.call('HINCRBY', key, bkey('c', current), dc)
  redis.call('EXPIRE', key, string.format('%d', math.ceil(window) + 1))
end

local function window_clear(key, w)
  redis.call('DEL', key)
  w.len = 0
  w.buckets = {}
end

local function reply(s, w, now, granted, transitioned, previous)
  local f, c = window_counts(w, now)
  local v = {state = s.state, generation = s.generation, open_until = fmt(s.open_until),
             reopen_count = s.reopen_count, probe_owner = s.probe_owner,
             probe_until = fmt(s.probe_until), probe_successes = s.probe_successes,
             failures = f, calls = c, reason = s.reason, now = fmt(now)}
  local out = {granted and 1 or 0, transitioned and 1 or 0, previous or ''}
  for _, name in ipairs(REPLY) do out[#out + 1] = v[name] end
  return out
end

local op = ARGV[1]

if op == 'fields' then return REPLY end

if op == 'snapshot' then
  local now = clock(ARGV[2])
  if now == nil then return redis.error_reply('BREAKER_BADARG snapshot: now is not a finite number') end
  local out = {}
  for i = 1, #KEYS, 2 do
    out[#out + 1] = reply(load_state(KEYS[i]), load_window(KEYS[i + 1]), now, false, false, nil)
  end
  return out
end

local OPS = {record_failure = true, record_success = true, admit = true,
             probe_result = true, cool_down = true, force = true}
if not OPS[op] then
  return redis.error_reply('BREAKER_BADARG unknown operation ' .. string.format('%q', tostring(op)))
end
if #KEYS ~= 2 or #ARGV < 13 then
  return redis.error_reply('BREAKER_BADARG ' .. op .. ': expected 2 keys and >= 13 args')
end

local now = clock(ARGV[2])
local rand = finite(ARGV[3])
local provider = ARGV[4]
local channel = ARGV[5]
local p = {
  failure_threshold = finite(ARGV[6]), failure_rate_threshold = finite(ARGV[7]),
  window = finite(ARGV[8]), recovery_timeout = finite(ARGV[9]),
  max_recovery_timeout = finite(ARGV[10]), success_threshold = finite(ARGV[11]),
  jitter = finite(ARGV[12]), probe_ttl = finite(ARGV[13]),
}
if now == nil or rand == nil or rand < 0 or rand >= 1 then
  return redis.error_reply('BREAKER_BADARG ' .. op .. ': now/rand malformed')
end
for name, value in pairs(p) do
  if value == nil then return redis.error_reply('BREAKER_BADARG ' .. op .. ': policy ' .. name .. ' malformed') end
end
if p.window <= 0 then return redis.error_reply('BREAKER_BADARG ' .. op .. ': window must be > 0') end
local a1, a2 = ARGV[14], ARGV[15]
local secret = ARGV[16]

local skey, wkey = KEYS[1], KEYS[2]
-- The deployment (key_prefix) the state key belongs to: named in every event, so processes
-- of another deployment sharing the channel drop it.
-- The state key is '{' .. key_prefix .. ':' .. provider .. '}:breaker' (flexitasks/keys.py).
local deployment = string.sub(skey, 2, #skey - #(':' .. provider .. '}:breaker'))
local s = load_state(skey)
local w = load_window(wkey)
local granted, transitioned, dirty = false, false, false
local previous = nil
local failure_event = nil

local function interval(n)
  if n > EXPONENT_CAP then n = EXPONENT_CAP end
  return math.min(p.recovery_timeout * 2 ^ n, p.max_recovery_timeout) * (1 - p.jitter * rand)
end

local function clear_token()
  s.probe_owner = ''
  s.probe_until = 0
  s.probe_successes = 0
end

local function transition(to, reason)
  previous = s.state
  s.state = to
  s.generation = s.generation + 1
  s.reason = reason
  transitioned = true
  dirty = true
end

if op == 'record_failure' or op == 'record_success' then
  local successes = tonumber(a1)
  if successes == nil or successes < 0 or successes ~= math.floor(successes) then
    return redis.error_reply('BREAKER_BADARG ' .. op .. ': successes malformed')
  end
  if s.state == 'closed' then
    if op == 'record_success' then
      window_add(wkey, w, p.window, now, 0, successes)
    else
      window_add(wkey, w, p.window, now, 1, 1 + successes)
      local f, c = window_counts(w, now)
      if f >= p.failure_threshold and f / c >= p.failure_rate_threshold then
        s.reopen_count = 0
        s.open_until = now + interval(0)
        clear_token()
        transition('open', 'threshold')
      elseif f == 1 then  -- only the first failure of a window is news to the fleet
        failure_event = '{"v":1,"type":"failure","deployment":' .. jstr(deployment)
          .. ',"provider":' .. jstr(provider)
          .. ',"generation":' .. string.format('%d', s.generation)
          .. ',"failures":' .. string.format('%d', f)
          .. ',"calls":' .. string.format('%d', c)
          .. ',"at":' .. jfloat(now) .. '}'
      end
    end
  end

elseif op == 'admit' then
  local owner = a1
  if owner == nil or owner == '' then return redis.error_reply('BREAKER_BADARG admit: empty owner') end
  if s.state == 'closed' or s.state == 'disabled' then
    granted = true
  elseif s.state == 'open' then
    if now >= s.open_until then
      s.probe_owner = owner
      s.probe_until = now + p.probe_ttl
      s.probe_successes = 0
      granted = true
      transition('half_open', 'recovery_elapsed')
    end
  elseif s.state == 'half_open' then
    if s.probe_owner == '' or now >= s.probe_until then
      s.probe_owner = owner
      s.probe_until = now + p.probe_ttl
      granted = true
      dirty = true
    else
      granted = (s.probe_owner == owner)
    end
  end

elseif op == 'probe_result' then
  local owner = a1
  if owner == nil or owner == '' or (a2 ~= '1' and a2 ~= '0') then
    return redis.error_reply('BREAKER_BADARG probe_result: owner/ok malformed')
  end
  if s.state == 'half_open' and s.probe_owner == owner and now < s.probe_until then
    if a2 == '1' then
      s.probe_successes = s.probe_successes + 1
      dirty = true
      if s.probe_successes < p.success_threshold then
        s.probe_owner = ''
        s.probe_until = 0
      else
        clear_token()
        window_clear(wkey, w)
        s.reopen_count = 0
        transition('closed', 'probe_succeeded')
      end
    else
      s.reopen_count = s.reopen_count + 1
      s.open_until = now + interval(s.reopen_count)
      clear_token()
      transition('open', 'probe_failed')
    end
  end

elseif op == 'cool_down' then
  local seconds = finite(a1)
  if seconds == nil or seconds < 0 then return redis.error_reply('BREAKER_BADARG cool_down: seconds malformed') end
  local till = now + seconds
  if s.state == 'closed' or s.state == 'half_open' then
    s.open_until = till
    clear_token()
    transition('open', 'retry_after')
  elseif s.state == 'open' and till > s.open_until then
    s.open_until = till
    transition('open', 'retry_after_extended')
  end

else -- force
  local target = a1
  if target ~= 'forced_open' and target ~= 'disabled' and target ~= 'closed' then
    return redis.error_reply('BREAKER_BADARG force: target must be forced_open, disabled or closed')
  end
  if s.probe_owner ~= '' or s.probe_until ~= 0 or s.probe_successes ~= 0 then
    clear_token()
    dirty = true
  end
  if target == 'closed' then
    window_clear(wkey, w)
    if s.reopen_count ~= 0 then s.reopen_count = 0; dirty = true end
  end
  if s.state ~= target then transition(target, 'operator') end
end

if dirty then save_state(skey, s) end

if transitioned then
  redis.call('PUBLISH', channel, signed('{"v":1,"type":"transition","deployment":' .. jstr(deployment)
    .. ',"provider":' .. jstr(provider)
    .. ',"state":' .. jstr(s.state)
    .. ',"previous":' .. jstr(previous)
    .. ',"generation":' .. string.format('%d', s.generation)
    .. ',"open_until":' .. jfloat(s.open_until)
    .. ',"probe_until":' .. jfloat(s.probe_until)
    .. ',"probe_owner":' .. jstr(s.probe_owner)
    .. ',"reason":' .. jstr(s.reason)
    .. ',"at":' .. jfloat(now) .. '}', secret))
elseif failure_event ~= nil then
  redis.call('PUBLISH', channel, signed(failure_event, secret))
end

return reply(s, w, now, granted, transitioned, previous)
