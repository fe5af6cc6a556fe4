-- The commit gate. KEYS: markers, sealed, the namespace fence, unfinished
-- prunes, the prune count, then (standalone only) the epoch hash of each
-- group. ARGV: epoch, instance id, the version the handle was told, '1' to
-- rewrite an existing marker (so a `WAIT` after it covers it), the prune
-- count the caller saw before checking the partials itself ('' when this
-- script checks them), then per group in KEYS order: a count and that many
-- vnodes. Returns {2, fence} if the handle was told a version below the
-- fence (a deposed leader may not seal), {3} if a prune began since the
-- caller checked the partials (check again), {0} if a partial is missing or
-- an unfinished prune covers the epoch (a seal ordered after that prune
-- finds no partials), else {1, committer}, creating the marker if there was
-- none.
local fence = redis.call('GET', KEYS[3]) or '00000000000000000000'
if ARGV[3] ~= '00000000000000000000' and ARGV[3] < fence then
  return {2, fence}
end
if ARGV[5] ~= '' and (redis.call('GET', KEYS[5]) or '0') ~= ARGV[5] then
  return {3}
end
for _, bound in ipairs(redis.call('HVALS', KEYS[4])) do
  if ARGV[1] < bound then return {0} end
end
local at = 6
for i = 6, #KEYS do
  local count = tonumber(ARGV[at])
  for j = at + 1, at + count do
    if redis.call('HEXISTS', KEYS[i], ARGV[j]) == 0 then return {0} end
  end
  at = at + count + 1
end
local committer = redis.call('HGET', KEYS[1], ARGV[1])
if committer then
  if ARGV[4] == '1' then redis.call('HSET', KEYS[1], ARGV[1], committer) end
  return {1, committer}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return {1, ARGV[2]}
