defmodule DSPex.Bridge.SessionStore.RedisBackend.Scripts do
  @moduledoc false
  # The server-side half of the Redis backend: every change of a session is one of these
  # scripts, which Redis runs atomically, so the checks (session alive, variable there, its
  # registration generation, the expected version) and the write cannot be split by another
  # node's write. Values are opaque blobs to them (Erlang external terms, made and checked by
  # the Elixir side before the script runs).
  #
  # Keys of a session (KEYS in every script, in this order):
  #   1. the session hash: `meta`, `ttl` (ms or "inf"), `hlimit`, `max`, `count`, `gen`, and
  #      per variable (field suffix = the encoded name f): `s:f` schema, `m:f` metadata,
  #      `v:f` value, `n:f` version, `g:f` the generation of its registration;
  #   2. the history hash: `<version>:f` -> entry, for the last `hlimit` versions;
  #   3. the index of live sessions: a sorted set, score = the Unix ms it expires at.
  # Every script that finds the session refreshes its expiry (`touch`). Changes are
  # published on `<session hash key>:changes`: `w` then per variable its name, new version,
  # old and new value; `d` and a name (deleted); `x` (the session was deleted).

  alias DSPex.Bridge.Redis

  @touch """
  local function touch(now)
    local ttl = redis.call('HGET', KEYS[1], 'ttl')
    if ttl == 'inf' then
      redis.call('ZADD', KEYS[3], 'inf', ARGV[1])
    else
      redis.call('PEXPIRE', KEYS[1], ttl)
      redis.call('PEXPIRE', KEYS[2], ttl)
      redis.call('ZADD', KEYS[3], now + tonumber(ttl), ARGV[1])
    end
  end
  local function alive()
    return redis.call('EXISTS', KEYS[1]) == 1
  end
  -- Changes go to the session's channel as a list of netstrings (`<length>:<bytes>`).
  local function ns(s)
    return #s .. ':' .. s
  end
  local function publish(parts)
    redis.call('PUBLISH', KEYS[1] .. ':changes', table.concat(parts))
  end
  """

  # ARGV: sid, now, meta, ttl, hlimit, max
  @create @touch <>
            """
            if alive() then return 'exists' end
            redis.call('HSET', KEYS[1], 'meta', ARGV[3], 'ttl', ARGV[4], 'hlimit', ARGV[5],
              'max', ARGV[6], 'count', 0, 'gen', 0)
            touch(tonumber(ARGV[2]))
            redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
            return 'ok'
            """

  # ARGV: sid
  @delete @touch <>
            """
            if not alive() then return 'no_session' end
            redis.call('DEL', KEYS[1], KEYS[2])
            redis.call('ZREM', KEYS[3], ARGV[1])
            publish({ns('x')})
            return 'ok'
            """

  # ARGV: sid, now -> {meta, count}
  @session @touch <>
             """
             if not alive() then return 'no_session' end
             touch(tonumber(ARGV[2]))
             return redis.call('HMGET', KEYS[1], 'meta', 'count')
             """

  # ARGV: sid, now, f, schema, metadata, value, history entry
  @register @touch <>
              """
              if not alive() then return 'no_session' end
              local f = ARGV[3]
              if redis.call('HEXISTS', KEYS[1], 'n:' .. f) == 1 then return 'exists' end
              local count = tonumber(redis.call('HGET', KEYS[1], 'count'))
              if count >= tonumber(redis.call('HGET', KEYS[1], 'max')) then
                return {'limit', redis.call('HGET', KEYS[1], 'max')}
              end
              local gen = redis.call('HINCRBY', KEYS[1], 'gen', 1)
              redis.call('HSET', KEYS[1], 's:' .. f, ARGV[4], 'm:' .. f, ARGV[5],
                'v:' .. f, ARGV[6], 'n:' .. f, 1, 'g:' .. f, gen, 'count', count + 1)
              redis.call('HSET', KEYS[2], '1:' .. f, ARGV[7])
              touch(tonumber(ARGV[2]))
              return {'ok', gen}
              """

  # ARGV: sid, now, f... -> per name {schema, gen, metadata, value, version} (nils when absent)
  @read @touch <>
          """
          if not alive() then return 'no_session' end
          local out = {}
          for i = 3, #ARGV do
            local f = ARGV[i]
            out[#out + 1] = redis.call('HMGET', KEYS[1], 's:' .. f, 'g:' .. f, 'm:' .. f,
              'v:' .. f, 'n:' .. f)
          end
          touch(tonumber(ARGV[2]))
          return out
          """

  # ARGV: sid, now -> the whole session hash
  @list @touch <>
          """
          if not alive() then return 'no_session' end
          touch(tonumber(ARGV[2]))
          return redis.call('HGETALL', KEYS[1])
          """

  # ARGV: sid, now, n, then per variable: f, gen, expected ('' for any), value, metadata ('' to
  # keep), history entry, lock token ('' for none). All or nothing: every check runs before
  # the first write.
  # -> {'ok', {version, metadata}...} or {reason, index, detail}
  @write @touch <>
           """
           if not alive() then return 'no_session' end
           local n = tonumber(ARGV[3])
           local versions = {}
           local olds = {}
           for i = 0, n - 1 do
             local b = 4 + i * 7
             local f = ARGV[b]
             local current = redis.call('HMGET', KEYS[1], 'n:' .. f, 'g:' .. f, 'v:' .. f)
             if not current[1] then return {'missing', i + 1, ''} end
             if current[2] ~= ARGV[b + 1] then return {'stale', i + 1, ''} end
             -- Fencing: a locked variable takes writes with its holder's token only, and a
             -- token is good only while its lock is held (a late write of an expired
             -- holder is refused however long it was paused).
             local held = redis.call('HMGET', KEYS[1] .. ':lock:' .. f, 'token', 'who')
             local token = ARGV[b + 6]
             if held[1] then
               if token == '' then return {'locked', i + 1, held[2]} end
               if token ~= held[1] then return {'stale_token', i + 1, ''} end
             elseif token ~= '' then
               return {'stale_token', i + 1, ''}
             end
             if ARGV[b + 2] ~= '' and ARGV[b + 2] ~= current[1] then
               return {'mismatch', i + 1, current[1]}
             end
             versions[i + 1] = tonumber(current[1]) + 1
             olds[i + 1] = current[3]
           end
           local hlimit = tonumber(redis.call('HGET', KEYS[1], 'hlimit'))
           local out = {'ok'}
           local changes = {ns('w')}
           for i = 0, n - 1 do
             local b = 4 + i * 7
             local f = ARGV[b]
             local v = versions[i + 1]
             redis.call('HSET', KEYS[1], 'v:' .. f, ARGV[b + 3], 'n:' .. f, v)
             if ARGV[b + 4] ~= '' then redis.call('HSET', KEYS[1], 'm:' .. f, ARGV[b + 4]) end
             redis.call('HSET', KEYS[2], v .. ':' .. f, ARGV[b + 5])
             if v - hlimit >= 1 then redis.call('HDEL', KEYS[2], (v - hlimit) .. ':' .. f) end
             out[#out + 1] = {v, redis.call('HGET', KEYS[1], 'm:' .. f)}
             changes[#changes + 1] = ns(f) .. ns(tostring(v)) .. ns(olds[i + 1]) .. ns(ARGV[b + 3])
           end
           touch(tonumber(ARGV[2]))
           publish(changes)
           return out
           """

  # ARGV: sid, now, f, limit -> {version, entries newest first} or 'missing'
  @history @touch <>
             """
             if not alive() then return 'no_session' end
             local f = ARGV[3]
             local v = redis.call('HGET', KEYS[1], 'n:' .. f)
             if not v then return 'missing' end
             v = tonumber(v)
             local hlimit = tonumber(redis.call('HGET', KEYS[1], 'hlimit'))
             local entries = {}
             local oldest = math.max(1, v - math.min(hlimit, tonumber(ARGV[4])) + 1)
             for version = v, oldest, -1 do
               entries[#entries + 1] = redis.call('HGET', KEYS[2], version .. ':' .. f)
             end
             touch(tonumber(ARGV[2]))
             return {v, entries}
             """

  # ARGV: sid, now, f
  @delete_variable @touch <>
                     """
                     if not alive() then return 'no_session' end
                     local f = ARGV[3]
                     local v = redis.call('HGET', KEYS[1], 'n:' .. f)
                     if not v then return 'missing' end
                     v = tonumber(v)
                     local hlimit = tonumber(redis.call('HGET', KEYS[1], 'hlimit'))
                     redis.call('HDEL', KEYS[1], 's:' .. f, 'm:' .. f, 'v:' .. f, 'n:' .. f,
                       'g:' .. f)
                     redis.call('HINCRBY', KEYS[1], 'count', -1)
                     for version = math.max(1, v - hlimit + 1), v do
                       redis.call('HDEL', KEYS[2], version .. ':' .. f)
                     end
                     touch(tonumber(ARGV[2]))
                     publish({ns('d'), ns(f)})
                     return 'ok'
                     """

  # ARGV: sid, now -> {session hash, history hash}: one consistent cut.
  @export @touch <>
            """
            if not alive() then return 'no_session' end
            touch(tonumber(ARGV[2]))
            return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
            """

  # ARGV: sid, now, meta, ttl, hlimit, max, n, then per variable: f, schema, metadata,
  # value, version, h, then h pairs of version and history entry.
  @import @touch <>
            """
            if alive() then return 'exists' end
            local n = tonumber(ARGV[7])
            redis.call('HSET', KEYS[1], 'meta', ARGV[3], 'ttl', ARGV[4], 'hlimit', ARGV[5],
              'max', ARGV[6], 'count', n, 'gen', n)
            local at = 8
            for gen = 1, n do
              local f = ARGV[at]
              redis.call('HSET', KEYS[1], 's:' .. f, ARGV[at + 1], 'm:' .. f, ARGV[at + 2],
                'v:' .. f, ARGV[at + 3], 'n:' .. f, ARGV[at + 4], 'g:' .. f, gen)
              local h = tonumber(ARGV[at + 5])
              at = at + 6
              for _ = 1, h do
                redis.call('HSET', KEYS[2], ARGV[at] .. ':' .. f, ARGV[at + 1])
                at = at + 2
              end
            end
            touch(tonumber(ARGV[2]))
            return 'ok'
            """

  for {name, source} <- [
        create: @create,
        delete: @delete,
        session: @session,
        register: @register,
        read: @read,
        list: @list,
        write: @write,
        history: @history,
        delete_variable: @delete_variable,
        export: @export,
        import: @import
      ] do
    @doc false
    def unquote(name)(), do: unquote(Macro.escape(Redis.script(source)))
  end
end
