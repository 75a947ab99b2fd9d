defmodule DSPex.Bridge.SessionStore.RedisBackend.LockScripts do
  @moduledoc false
  # Fenced optimizer locks of Redis sessions, server side. Per variable (f, the encoded
  # name), beside the session hash S:
  #   S:lock:f   the holder: `who` (the optimizer id, an external term), `token`, `member`
  #              (the waiter entry it was granted to), expiring with its lease (PEXPIRE);
  #   S:fence:f  the token counter: every grant takes the next value, so tokens only grow;
  #   S:q:f      the waiters, a sorted set: score = -priority * 2^32 + arrival, so higher
  #              priority first and first come first served within one;
  #   S:qi:f     each waiter's lease (`m:l`), optimizer (`m:w`) and deadline (`m:d`).
  # A waiter member is `<node id>|<n>`; its grant is published on `<grants prefix><node id>`
  # as `<member>|<token>`, where the waiter's node hands it to the waiting process.
  #
  # KEYS: S, S:lock:f, S:fence:f, S:q:f, S:qi:f. ARGV[1] the grants prefix, ARGV[2] now (ms).

  alias DSPex.Bridge.Redis

  # When the lock is free, grants it to the first waiter whose deadline has not passed.
  @grant_next """
  local function grant(member, who, lease, priority)
    local token = redis.call('INCR', KEYS[3])
    redis.call('HSET', KEYS[2], 'who', who, 'token', token, 'member', member, 'prio', priority)
    redis.call('PEXPIRE', KEYS[2], lease)
    return token
  end
  local function forget(member)
    redis.call('ZREM', KEYS[4], member)
    redis.call('HDEL', KEYS[5], member .. ':l', member .. ':w', member .. ':d', member .. ':p')
  end
  local function node_of(member)
    return string.match(member, '^(.-)|')
  end
  local function grant_next()
    if redis.call('EXISTS', KEYS[2]) == 1 then return end
    local now = tonumber(ARGV[2])
    while true do
      local head = redis.call('ZRANGE', KEYS[4], 0, 0)[1]
      if not head then return end
      local info = redis.call('HMGET', KEYS[5], head .. ':l', head .. ':w', head .. ':d', head .. ':p')
      forget(head)
      if info[3] and tonumber(info[3]) >= now then
        local token = grant(head, info[2], info[1], info[4] or '0')
        redis.call('PUBLISH', ARGV[1] .. node_of(head), 'g|' .. head .. '|' .. token)
        return
      end
    end
  end
  """

  # ARGV[3..]: f, member, who, lease, deadline, score, mode ('abort' | 'wait' | 'preempt'),
  # priority, grace ms. A preempting waiter of a higher priority than the holder's has the
  # holder's node told `p|<grace>|<holder member>|<who>`: it ends the holder's lock after
  # the grace period, and the grant goes to the first waiter, by priority.
  # -> {'granted', token} | {'held', who} | {'queued', pttl} | 'no_session' | 'missing'
  @acquire @grant_next <>
             """
             if redis.call('EXISTS', KEYS[1]) == 0 then return 'no_session' end
             if redis.call('HEXISTS', KEYS[1], 'n:' .. ARGV[3]) == 0 then return 'missing' end
             grant_next()
             local holder = redis.call('HMGET', KEYS[2], 'who', 'token', 'member', 'prio', 'preempting')
             if holder[1] == ARGV[5] then return {'granted', tonumber(holder[2])} end
             if not holder[1] and redis.call('ZCARD', KEYS[4]) == 0 then
               return {'granted', grant(ARGV[4], ARGV[5], ARGV[6], ARGV[10])}
             end
             if ARGV[9] == 'abort' then return {'held', holder[1] or ''} end
             redis.call('ZADD', KEYS[4], ARGV[8], ARGV[4])
             redis.call('HSET', KEYS[5], ARGV[4] .. ':l', ARGV[6], ARGV[4] .. ':w', ARGV[5],
               ARGV[4] .. ':d', ARGV[7], ARGV[4] .. ':p', ARGV[10])
             if ARGV[9] == 'preempt' and holder[1] and not holder[5]
                and tonumber(ARGV[10]) > tonumber(holder[4] or '0') then
               redis.call('HSET', KEYS[2], 'preempting', ARGV[4])
               redis.call('PUBLISH', ARGV[1] .. node_of(holder[3]),
                 'p|' .. ARGV[11] .. '|' .. holder[3] .. '|' .. ARGV[5])
             end
             return {'queued', redis.call('PTTL', KEYS[2])}
             """

  # ARGV[3]: who -> 'ok' | 'not_owner'
  @release @grant_next <>
             """
             if redis.call('HGET', KEYS[2], 'who') ~= ARGV[3] then return 'not_owner' end
             redis.call('DEL', KEYS[2])
             grant_next()
             return 'ok'
             """

  # A waiter that gives up, or a holder or waiter that died. ARGV[3]: member
  # -> 'dequeued' | 'released' (it held the lock: given back) | 'gone'
  @drop_member @grant_next <>
                 """
                 if redis.call('ZSCORE', KEYS[4], ARGV[3]) then
                   forget(ARGV[3])
                   return 'dequeued'
                 end
                 if redis.call('HGET', KEYS[2], 'member') == ARGV[3] then
                   redis.call('DEL', KEYS[2])
                   grant_next()
                   return 'released'
                 end
                 return 'gone'
                 """

  # ARGV[3]: who, ARGV[4]: lease -> 'ok' | 'not_owner'
  @renew """
  if redis.call('HGET', KEYS[2], 'who') ~= ARGV[3] then return 'not_owner' end
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  return 'ok'
  """

  # After a holder's lease ran out nobody releases: the waiters' node pokes. -> pttl
  @poke @grant_next <>
          """
          grant_next()
          return redis.call('PTTL', KEYS[2])
          """

  # -> {who | false, token | false, pttl, waiters}
  @info """
  local holder = redis.call('HMGET', KEYS[2], 'who', 'token')
  return {holder[1], holder[2], redis.call('PTTL', KEYS[2]), redis.call('ZCARD', KEYS[4])}
  """

  for {name, source} <- [
        acquire: @acquire,
        release: @release,
        drop_member: @drop_member,
        renew: @renew,
        poke: @poke,
        info: @info
      ] do
    @doc false
    def unquote(name)(), do: unquote(Macro.escape(Redis.script(source)))
  end
end
