-- flexitasks script prelude: the clock and exact-number rules every Lua script shares.
--
-- script_clock.script_source puts it before breaker/transition.lua and limits/limit.lua
-- (one chunk, so these locals are theirs); the Python side of the same rules is
-- script_clock.clock_arg. Defines locals only: reads no KEYS/ARGV, calls nothing but TIME.
-- Redis reports a script error's line counted from this prelude's first line.

-- Shortest decimal that reads back as exactly x: stored and published times must
-- compare equal to the Python model, and Lua's own tostring keeps only 14 digits.
local function fmt(x)
  local s = string.format('%.15g', x)
  if tonumber(s) ~= x then
    s = string.format('%.16g', x)
    if tonumber(s) ~= x then s = string.format('%.17g', x) end
  end
  return s
end

-- The number an argument spells, or nil for anything else, NaN and the infinities.
local function finite(s)
  local x = tonumber(s)
  if x == nil or x ~= x or x == math.huge or x == -math.huge then return nil end
  return x
end

-- The script's now: the injected clock sent by clock_arg (exactly), or Redis TIME when ''.
local function clock(arg)
  if arg ~= nil and arg ~= '' then return finite(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
