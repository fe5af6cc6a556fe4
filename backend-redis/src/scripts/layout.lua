-- Records the namespace's group count, or returns the one recorded.
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
