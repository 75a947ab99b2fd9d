defmodule DSPex.Bridge.SessionStore.RedisBackend.Scripts do
  @moduledoc false
  # The server-side half of the Redis backend: every change of a session is one of these
  # scripts, which Redis runs atomically, so the checks (session alive, variable there, its
  # registration generation, the expected version) and the write cannot be split by another
  # node's write. Values are opaque blobs to them (Erlang external terms, made and checked by
  # the Elixir side before the script runs).
  #
  # Keys of a session (KEYS in every script, in this order):
  #   1. the session hash: `meta`, `ttl` (ms or "inf"), `hlimit`, `max`, `count`, `gen`,
  #      `gver` (the graph's version), and per variable (field suffix = the encoded name f):
  #      `s:f` schema, `m:f` metadata, `v:f` value, `n:f` version, `g:f` the generation of
  #      its registration, `a:f` / `p:f` its access policy and the policy's version;
  #   2. the history hash: `<version>:f` -> entry, for the last `hlimit` versions;
  #   3. the index of live sessions: a sorted set, score = the Unix ms it expires at.
  # Beside them, `<session hash>:g` holds the dependency graph and `<session hash>:c` the
  # nodes that cache its reads (node id -> the server ms their lease ends, see ReadCache).
  # ARGV[1] is the session id; expiry goes by the server's clock (`server_now`).
  # Every script that finds the session refreshes its expiry (`touch`). Changes are
  # published on `<session hash key>:changes` as netstrings: the kind, the writer's node id
  # and its acknowledgement tag, then for `w` per variable its name, new version, old and
  # new value; for `d` a name (deleted); for `x` nothing more (the session was deleted).
  # A change returns `{'ok', cachers, ...}`: the other nodes whose read lease is live, each
  # with the ms left of it, which must drop their copies before the change counts as done.

  alias DSPex.Bridge.Redis

  @touch """
  -- The server's clock, so that the index agrees with the keys' own expiry to the ms.
  local function server_now()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  -- `ttl` when the caller read it already. A session without expiry is in the index for
  -- good from its creation (`first_touch`): nothing to refresh.
  local function touch(ttl)
    ttl = ttl or redis.call('HGET', KEYS[1], 'ttl')
    if ttl ~= 'inf' then
      local now = server_now()
      redis.call('PEXPIRE', KEYS[1], ttl)
      redis.call('PEXPIRE', KEYS[2], ttl)
      redis.call('PEXPIRE', KEYS[1] .. ':g', ttl)
      redis.call('PEXPIRE', KEYS[1] .. ':c', ttl)
      -- One ms past the keys' own expiry: TIME is read in whole ms rounded down, so the
      -- index never lets a session go while its keys can still be read.
      redis.call('ZADD', KEYS[3], now + tonumber(ttl) + 1, ARGV[1])
    end
  end
  local function first_touch()
    if redis.call('HGET', KEYS[1], 'ttl') == 'inf' then
      redis.call('ZADD', KEYS[3], 'inf', ARGV[1])
    else
      touch()
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
  -- The nodes caching this session's reads, other than the writer's, as a flat list of
  -- node id and ms of lease left; leases that ran out are dropped on the way.
  local C = KEYS[1] .. ':c'
  local function cachers(writer)
    local out = {}
    local flat = redis.call('HGETALL', C)
    if #flat == 0 then return out end
    local now = server_now()
    for i = 1, #flat, 2 do
      local left = tonumber(flat[i + 1]) - now
      if left <= 0 then
        redis.call('HDEL', C, flat[i])
      elseif flat[i] ~= writer then
        out[#out + 1] = flat[i]
        out[#out + 1] = left
      end
    end
    return out
  end
  -- Per variable f: schema, gen, metadata, value, version, policy, policy version.
  local function rows(first)
    local out = {}
    for i = first, #ARGV do
      local f = ARGV[i]
      out[#out + 1] = redis.call('HMGET', KEYS[1], 's:' .. f, 'g:' .. f, 'm:' .. f,
        'v:' .. f, 'n:' .. f, 'a:' .. f, 'p:' .. f)
    end
    return out
  end
  local function parse(s)
    local out = {}
    if not s then return out end
    local pos = 1
    while pos <= #s do
      local colon = string.find(s, ':', pos, true)
      local len = tonumber(string.sub(s, pos, colon - 1))
      out[#out + 1] = string.sub(s, colon + 1, colon + len)
      pos = colon + 1 + len
    end
    return out
  end
  -- The graph (S:g): `o:f` f's successors, `i:f` its predecessors (netstring lists), and
  -- `k:` .. ns(from) .. ns(to) the edge's kind; `gver` in S counts its changes.
  local G = KEYS[1] .. ':g'
  local function drop_item(field, item)
    local parts = {}
    for _, x in ipairs(parse(redis.call('HGET', G, field))) do
      if x ~= item then parts[#parts + 1] = ns(x) end
    end
    if #parts == 0 then redis.call('HDEL', G, field) else redis.call('HSET', G, field, table.concat(parts)) end
  end
  local function add_edge(f, t, kind)
    redis.call('HSET', G, 'o:' .. f, (redis.call('HGET', G, 'o:' .. f) or '') .. ns(t))
    redis.call('HSET', G, 'i:' .. t, (redis.call('HGET', G, 'i:' .. t) or '') .. ns(f))
    redis.call('HSET', G, 'k:' .. ns(f) .. ns(t), kind)
  end
  local function remove_edge(f, t)
    drop_item('o:' .. f, t)
    drop_item('i:' .. t, f)
    redis.call('HDEL', G, 'k:' .. ns(f) .. ns(t))
  end
  -- Removes every edge of f; true if there was one.
  local function clear_edges(f)
    local any = false
    for _, t in ipairs(parse(redis.call('HGET', G, 'o:' .. f))) do remove_edge(f, t); any = true end
    for _, p in ipairs(parse(redis.call('HGET', G, 'i:' .. f))) do remove_edge(p, f); any = true end
    return any
  end
  """

  # ARGV: sid, meta, ttl, hlimit, max
  @create @touch <>
            """
            if alive() then return 'exists' end
            redis.call('DEL', C)
            redis.call('HSET', KEYS[1], 'meta', ARGV[2], 'ttl', ARGV[3], 'hlimit', ARGV[4],
              'max', ARGV[5], 'count', 0, 'gen', 0)
            first_touch()
            redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', server_now())
            return 'ok'
            """

  # ARGV: sid, writer node, tag -> {'ok', cachers}
  @delete @touch <>
            """
            if not alive() then return 'no_session' end
            local waits = cachers(ARGV[2])
            redis.call('DEL', KEYS[1], KEYS[2], G, C)
            redis.call('ZREM', KEYS[3], ARGV[1])
            publish({ns('x'), ns(ARGV[2]), ns(ARGV[3])})
            return {'ok', waits}
            """

  # ARGV: sid -> {meta, count}
  @session @touch <>
             """
             if not alive() then return 'no_session' end
             touch()
             return redis.call('HMGET', KEYS[1], 'meta', 'count')
             """

  # ARGV: sid, f, schema, metadata, value, history entry, access policy ('' when the
  # default: private, no rules)
  @register @touch <>
              """
              if not alive() then return 'no_session' end
              local f = ARGV[2]
              if redis.call('HEXISTS', KEYS[1], 'n:' .. f) == 1 then return 'exists' end
              local count = tonumber(redis.call('HGET', KEYS[1], 'count'))
              if count >= tonumber(redis.call('HGET', KEYS[1], 'max')) then
                return {'limit', redis.call('HGET', KEYS[1], 'max')}
              end
              local gen = redis.call('HINCRBY', KEYS[1], 'gen', 1)
              redis.call('HSET', KEYS[1], 's:' .. f, ARGV[3], 'm:' .. f, ARGV[4],
                'v:' .. f, ARGV[5], 'n:' .. f, 1, 'g:' .. f, gen, 'count', count + 1)
              redis.call('HSET', KEYS[2], '1:' .. f, ARGV[6])
              if ARGV[7] ~= '' then
                redis.call('HSET', KEYS[1], 'a:' .. f, ARGV[7], 'p:' .. f,
                  redis.call('INCR', KEYS[3] .. ':policy_versions'))
              end
              touch()
              return {'ok', gen}
              """

  # ARGV: sid, f... -> per name {schema, gen, metadata, value, version, policy, policy
  # version} (nils when absent): a foreign caller's decision uses the policy read with the
  # value.
  @read @touch <>
          """
          if not alive() then return 'no_session' end
          touch()
          return rows(2)
          """

  # ARGV: sid, node, lease ms, f... -> {ttl, rows as `read`}: the same read, which also
  # gives `node` a read lease on the session (or extends the one it holds): until it runs
  # out, every change waits for `node` to drop its copies (see ReadCache).
  @read_cached @touch <>
                 """
                 if not alive() then return 'no_session' end
                 local ends = server_now() + tonumber(ARGV[3])
                 if ends > tonumber(redis.call('HGET', C, ARGV[2]) or '0') then
                   redis.call('HSET', C, ARGV[2], ends)
                 end
                 touch()
                 return {redis.call('HGET', KEYS[1], 'ttl'), rows(4)}
                 """

  # ARGV: sid -> the whole session hash
  @list @touch <>
          """
          if not alive() then return 'no_session' end
          touch()
          return redis.call('HGETALL', KEYS[1])
          """

  # ARGV: sid, n, then per variable: f, gen, expected ('' for any), value, metadata ('' to
  # keep), history entry, lock token ('' for none), policy version the write was allowed on
  # ('' for the owner); then the writer's node id and tag. All or nothing: every check runs
  # before the first write.
  # -> {'ok', cachers, {version, metadata}...} or {reason, index, detail}
  @write @touch <>
           """
           local n = tonumber(ARGV[2])
           -- (A missing session shows as a missing first variable, checked then.)
           if n == 0 and not alive() then return 'no_session' end
           local versions = {}
           local olds = {}
           local metas = {}
           for i = 0, n - 1 do
             local b = 3 + i * 8
             local f = ARGV[b]
             local current = redis.call('HMGET', KEYS[1], 'n:' .. f, 'g:' .. f, 'v:' .. f,
               'm:' .. f, 'p:' .. f)
             if not current[1] then
               if not alive() then return 'no_session' end
               return {'missing', i + 1, ''}
             end
             if current[2] ~= ARGV[b + 1] then return {'stale', i + 1, ''} end
             -- A foreign caller's write was decided on a policy version: it must still hold.
             if ARGV[b + 7] ~= '' and (current[5] or '0') ~= ARGV[b + 7] then
               return {'policy_changed', i + 1, ''}
             end
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
             metas[i + 1] = current[4]
           end
           local settings = redis.call('HMGET', KEYS[1], 'hlimit', 'ttl')
           local hlimit = tonumber(settings[1])
           local writer, tag = ARGV[3 + n * 8], ARGV[4 + n * 8]
           local out = {'ok', cachers(writer)}
           local changes = {ns('w'), ns(writer), ns(tag)}
           for i = 0, n - 1 do
             local b = 3 + i * 8
             local f = ARGV[b]
             local v = versions[i + 1]
             local meta = metas[i + 1]
             if ARGV[b + 4] ~= '' then
               meta = ARGV[b + 4]
               redis.call('HSET', KEYS[1], 'v:' .. f, ARGV[b + 3], 'n:' .. f, v, 'm:' .. f, meta)
             else
               redis.call('HSET', KEYS[1], 'v:' .. f, ARGV[b + 3], 'n:' .. f, v)
             end
             redis.call('HSET', KEYS[2], v .. ':' .. f, ARGV[b + 5])
             if v - hlimit >= 1 then redis.call('HDEL', KEYS[2], (v - hlimit) .. ':' .. f) end
             out[#out + 1] = {v, meta}
             changes[#changes + 1] = ns(f) .. ns(tostring(v)) .. ns(olds[i + 1]) .. ns(ARGV[b + 3])
           end
           touch(settings[2])
           publish(changes)
           return out
           """

  # ARGV: sid, f, limit -> {version, entries newest first} or 'missing'
  @history @touch <>
             """
             if not alive() then return 'no_session' end
             local f = ARGV[2]
             local v = redis.call('HGET', KEYS[1], 'n:' .. f)
             if not v then return 'missing' end
             v = tonumber(v)
             local hlimit = tonumber(redis.call('HGET', KEYS[1], 'hlimit'))
             local entries = {}
             local oldest = math.max(1, v - math.min(hlimit, tonumber(ARGV[3])) + 1)
             for version = v, oldest, -1 do
               entries[#entries + 1] = redis.call('HGET', KEYS[2], version .. ':' .. f)
             end
             touch()
             return {v, entries}
             """

  # ARGV: sid, f, writer node, tag (its edges go with it) -> {'ok', cachers} | 'missing'
  @delete_variable @touch <>
                     """
                     if not alive() then return 'no_session' end
                     local f = ARGV[2]
                     local v = redis.call('HGET', KEYS[1], 'n:' .. f)
                     if not v then return 'missing' end
                     if clear_edges(f) then redis.call('HINCRBY', KEYS[1], 'gver', 1) end
                     v = tonumber(v)
                     local hlimit = tonumber(redis.call('HGET', KEYS[1], 'hlimit'))
                     redis.call('HDEL', KEYS[1], 's:' .. f, 'm:' .. f, 'v:' .. f, 'n:' .. f,
                       'g:' .. f, 'a:' .. f, 'p:' .. f)
                     redis.call('HINCRBY', KEYS[1], 'count', -1)
                     for version = math.max(1, v - hlimit + 1), v do
                       redis.call('HDEL', KEYS[2], version .. ':' .. f)
                     end
                     touch()
                     publish({ns('d'), ns(ARGV[3]), ns(ARGV[4]), ns(f)})
                     return {'ok', cachers(ARGV[3])}
                     """

  # ARGV: sid -> {session hash, history hash, graph hash}: one consistent cut.
  @export @touch <>
            """
            if not alive() then return 'no_session' end
            touch()
            return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]),
              redis.call('HGETALL', G)}
            """

  # ARGV: sid, meta, ttl, hlimit, max, n, then per variable: f, schema, metadata,
  # value, version, h, then h pairs of version and history entry; then e, and e triples of
  # from, to, kind.
  @import @touch <>
            """
            if alive() then return 'exists' end
            local n = tonumber(ARGV[6])
            redis.call('DEL', C)
            redis.call('HSET', KEYS[1], 'meta', ARGV[2], 'ttl', ARGV[3], 'hlimit', ARGV[4],
              'max', ARGV[5], 'count', n, 'gen', n)
            local at = 7
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
            -- The snapshot's graph (checked acyclic by its import) follows: e, then triples.
            local e = tonumber(ARGV[at])
            for i = 0, e - 1 do
              add_edge(ARGV[at + 1 + i * 3], ARGV[at + 2 + i * 3], ARGV[at + 3 + i * 3])
            end
            first_touch()
            return 'ok'
            """

  # ARGV: sid -> {graph version, the graph hash}
  @graph_dump @touch <>
                """
                if not alive() then return 'no_session' end
                touch()
                return {tonumber(redis.call('HGET', KEYS[1], 'gver') or '0'), redis.call('HGETALL', G)}
                """

  # ARGV: sid, n, then n triples from, to, kind. All or nothing; each edge is checked
  # against the graph with the batch's earlier edges in it, by a breadth-first search here,
  # so no two callers on any nodes can close a cycle together.
  # -> {'ok', added} | {'missing', f} | {'cycle', to, ..., from, to}
  @graph_add @touch <>
               """
               if not alive() then return 'no_session' end
               local added = {}
               local function undo()
                 for _, e in ipairs(added) do remove_edge(e[1], e[2]) end
               end
               local function path(start, goal)
                 local prev = {[start] = start}
                 local queue = {start}
                 local head = 1
                 while head <= #queue do
                   local n = queue[head]
                   head = head + 1
                   if n == goal then
                     local p = {}
                     local x = goal
                     while x ~= start do table.insert(p, 1, x); x = prev[x] end
                     table.insert(p, 1, start)
                     return p
                   end
                   for _, s in ipairs(parse(redis.call('HGET', G, 'o:' .. n))) do
                     if not prev[s] then prev[s] = n; queue[#queue + 1] = s end
                   end
                 end
                 return nil
               end
               for i = 0, tonumber(ARGV[2]) - 1 do
                 local f, t, kind = ARGV[3 + i * 3], ARGV[4 + i * 3], ARGV[5 + i * 3]
                 for _, x in ipairs({f, t}) do
                   if redis.call('HEXISTS', KEYS[1], 'n:' .. x) == 0 then
                     undo()
                     return {'missing', x}
                   end
                 end
                 if redis.call('HEXISTS', G, 'k:' .. ns(f) .. ns(t)) == 0 then
                   local p = (f == t) and {t} or path(t, f)
                   if p then
                     undo()
                     p[#p + 1] = t
                     table.insert(p, 1, 'cycle')
                     return p
                   end
                   add_edge(f, t, kind)
                   added[#added + 1] = {f, t}
                 end
               end
               if #added > 0 then redis.call('HINCRBY', KEYS[1], 'gver', 1) end
               touch()
               return {'ok', #added}
               """

  # ARGV: sid, from, to -> 'ok' | 'not_found'
  @graph_remove @touch <>
                  """
                  if not alive() then return 'no_session' end
                  if redis.call('HEXISTS', G, 'k:' .. ns(ARGV[2]) .. ns(ARGV[3])) == 0 then
                    return 'not_found'
                  end
                  remove_edge(ARGV[2], ARGV[3])
                  redis.call('HINCRBY', KEYS[1], 'gver', 1)
                  touch()
                  return 'ok'
                  """

  # ARGV: sid, f -> 'ok' | 'missing'
  @graph_clear @touch <>
                 """
                 if not alive() then return 'no_session' end
                 if redis.call('HEXISTS', KEYS[1], 'n:' .. ARGV[2]) == 0 then return 'missing' end
                 if clear_edges(ARGV[2]) then redis.call('HINCRBY', KEYS[1], 'gver', 1) end
                 touch()
                 return 'ok'
                 """

  # ARGV: sid, f, the policy version it was read at, the new policy
  # -> {'ok', new version} | 'missing' | 'changed'
  @policy_write @touch <>
                  """
                  if not alive() then return 'no_session' end
                  local f = ARGV[2]
                  if redis.call('HEXISTS', KEYS[1], 'n:' .. f) == 0 then return 'missing' end
                  if (redis.call('HGET', KEYS[1], 'p:' .. f) or '0') ~= ARGV[3] then return 'changed' end
                  -- Versions come from one counter for the whole server, so a node's copy of
                  -- a policy can never match a later policy of the same name by number.
                  local v = redis.call('INCR', KEYS[3] .. ':policy_versions')
                  redis.call('HSET', KEYS[1], 'a:' .. f, ARGV[4], 'p:' .. f, v)
                  touch()
                  return {'ok', v}
                  """

  # KEYS[1]: the index -> the ids of the sessions alive now, by the server's clock.
  @sessions """
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
  """

  for {name, source} <- [
        create: @create,
        delete: @delete,
        session: @session,
        register: @register,
        read: @read,
        read_cached: @read_cached,
        list: @list,
        write: @write,
        history: @history,
        delete_variable: @delete_variable,
        export: @export,
        import: @import,
        graph_dump: @graph_dump,
        graph_add: @graph_add,
        graph_remove: @graph_remove,
        graph_clear: @graph_clear,
        policy_write: @policy_write,
        sessions: @sessions
      ] do
    @doc false
    def unquote(name)(), do: unquote(Macro.escape(Redis.script(source)))
  end
end
