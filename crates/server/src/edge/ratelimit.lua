local threshold = tonumber(ARGV[1])
local base = tonumber(ARGV[2])
local maxpen = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local memory = tonumber(ARGV[5])
local flag = tonumber(ARGV[6])
local n = #KEYS / 4
for i = 1, n do
  local pttl = redis.call('PTTL', KEYS[(i - 1) * 4 + 2])
  if pttl > 0 then return {2, i, 0, pttl, 0, 0} end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local new_tats = {}
local out = {0, 1, 0, 0, 0, 0}
for i = 1, n do
  local want = tonumber(ARGV[6 + n + i])
  if want ~= 0 then
    local q = tonumber(ARGV[6 + i])
    local T = 60000000 / q
    local tat = tonumber(redis.call('GET', KEYS[(i - 1) * 4 + 1]) or now)
    if tat < now then tat = now end
    local granted
    if want > 0 then
      local allow_at = tat + T - q * T
      if now < allow_at then
        local wait = math.ceil((allow_at - now) / 1000)
        if flag == 0 then return {1, i, 0, wait, 0, 0} end
        local f = (flag - 1) * 4
        local rk = KEYS[f + 3]
        local rej = redis.call('INCR', rk)
        if rej == 1 then redis.call('PEXPIRE', rk, window) end
        if rej >= threshold then
          redis.call('DEL', rk)
          local lk = KEYS[f + 4]
          local lvl = redis.call('INCR', lk)
          redis.call('PEXPIRE', lk, memory)
          local pen = math.min(base * math.pow(4, lvl - 1), maxpen)
          redis.call('SET', KEYS[f + 2], '1', 'PX', math.floor(pen))
          return {3, flag, 0, math.floor(pen), lvl, rej}
        end
        return {1, i, 0, wait, 0, rej}
      end
      granted = math.max(1, math.min(want, math.floor((now - tat) / T) + q))
    else
      granted = math.max(0, math.min(-want, math.floor((now - tat) / T) + q))
    end
    if granted > 0 then
      tat = tat + granted * T
      new_tats[i] = tat
    end
    local rem = math.floor((now - (tat - q * T)) / T)
    if rem < 0 then rem = 0 end
    out[#out + 1] = granted
    out[#out + 1] = rem
    out[#out + 1] = math.ceil((tat - now) / 1000)
  else
    out[#out + 1] = 0
    out[#out + 1] = 0
    out[#out + 1] = 0
  end
end
for i = 1, n do
  if new_tats[i] then
    redis.call('SET', KEYS[(i - 1) * 4 + 1], string.format('%.0f', new_tats[i]), 'PX', math.ceil((new_tats[i] - now) / 1000) + 1000)
  end
end
return out
