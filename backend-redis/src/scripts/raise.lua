-- Raises one fence key, never lowers it. Returns the fence. With ARGV[2]
-- = '1' it rewrites an unchanged fence, so a `WAIT` after it covers the
-- value.
local fence = redis.call('GET', KEYS[1]) or '00000000000000000000'
if ARGV[1] > fence then
  fence = ARGV[1]
elseif ARGV[2] ~= '1' then
  return fence
end
redis.call('SET', KEYS[1], fence)
return fence
