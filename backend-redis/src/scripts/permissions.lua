-- What the connected ACL user may not do that this store needs, checked
-- without touching any key (`redis.acl_check_cmd`, Redis 7.0 and later;
-- on an older server, nothing is reported). KEYS: the layout key (routes
-- the call on a cluster; never read). ARGV: '1' if `WAIT` is needed, then
-- every kind of key of the namespace (a namespace-wide one of each kind,
-- and group 0's). Returns a list of 'command' (refused on every key),
-- 'key KEY' (no command allowed on it) or 'command KEY' strings; empty
-- when all is allowed.
local missing = {}
if redis.acl_check_cmd == nil then
  return missing
end
local keyed = {
  {'GET'}, {'MGET'}, {'SET', 'v', 'NX'}, {'INCR'}, {'UNLINK'},
  {'HGET', 'f'}, {'HMGET', 'f'}, {'HSET', 'f', 'v'}, {'HDEL', 'f'},
  {'HEXISTS', 'f'}, {'HGETALL'}, {'HKEYS'}, {'HLEN'}, {'HVALS'},
  {'ZADD', '0', 'm'}, {'ZREM', 'm'}, {'ZRANGEBYLEX', '-', '+'},
  {'ZREVRANGEBYLEX', '+', '-'},
  {'EVALSHA', 'ffffffffffffffffffffffffffffffffffffffff', '1'},
}
local keys = {}
for i = 2, #ARGV do
  keys[#keys + 1] = ARGV[i]
end
-- refused[c][k]: command c may not run on key k.
local refused = {}
for c, command in ipairs(keyed) do
  refused[c] = {}
  for k, key in ipairs(keys) do
    local args
    if command[1] == 'EVALSHA' then
      args = {'EVALSHA', command[2], command[3], key}
    else
      args = {command[1], key}
      for i = 2, #command do
        args[#args + 1] = command[i]
      end
    end
    if not redis.acl_check_cmd(unpack(args)) then
      refused[c][k] = true
    end
  end
end
-- A command refused on every key is named alone; a key no command may
-- touch, alone; what remains, as pairs.
local whole_command = {}
for c, command in ipairs(keyed) do
  local count = 0
  for k = 1, #keys do
    if refused[c][k] then
      count = count + 1
    end
  end
  if count == #keys then
    whole_command[c] = true
    missing[#missing + 1] = string.lower(command[1])
  end
end
local commands_left = 0
for c = 1, #keyed do
  if not whole_command[c] then
    commands_left = commands_left + 1
  end
end
for k, key in ipairs(keys) do
  local count = 0
  for c = 1, #keyed do
    if refused[c][k] and not whole_command[c] then
      count = count + 1
    end
  end
  if commands_left > 0 and count == commands_left then
    missing[#missing + 1] = 'key ' .. key
  else
    for c, command in ipairs(keyed) do
      if refused[c][k] and not whole_command[c] then
        missing[#missing + 1] = string.lower(command[1]) .. ' ' .. key
      end
    end
  end
end
local plain = {{'script|load', 'SCRIPT', 'LOAD', 'return 0'}, {'info', 'INFO', 'memory'}}
if ARGV[1] == '1' then
  plain[#plain + 1] = {'wait', 'WAIT', '1', '0'}
end
for _, command in ipairs(plain) do
  if not redis.acl_check_cmd(unpack(command, 2)) then
    missing[#missing + 1] = command[1]
  end
end
return missing
