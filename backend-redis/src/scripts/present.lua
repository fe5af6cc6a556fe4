-- Cluster gate, phase one, for one group: 1 if every vnode in ARGV has a
-- field in the epoch hash KEYS[1], else 0.
for _, vnode in ipairs(ARGV) do
  if redis.call('HEXISTS', KEYS[1], vnode) == 0 then return 0 end
end
return 1
