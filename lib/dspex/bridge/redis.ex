defmodule DSPex.Bridge.Redis do
  @moduledoc """
  A Redis client inside the NIF, for the Redis backend and for your own use.

  Connections and I/O run on the NIF's own runtime threads (never a BEAM scheduler); a call
  waits in the calling process for its reply message, so a slow server slows only its
  caller. A connection reconnects by itself after the server went away; while it is away,
  calls fail fast with `{:error, {:unavailable, text}}`.

  ## Example

      {:ok, redis} = DSPex.Bridge.Redis.connect("redis://127.0.0.1:6379/0", password: "s3cret")
      {:ok, :ok} = DSPex.Bridge.Redis.command(redis, ["SET", "greeting", "hello"])
      {:ok, "hello"} = DSPex.Bridge.Redis.command(redis, ["GET", "greeting"])
      {:ok, [1, 2]} = DSPex.Bridge.Redis.pipeline(redis, [["INCR", "n"], ["INCR", "n"]])

      incr_by = DSPex.Bridge.Redis.script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
      {:ok, 12} = DSPex.Bridge.Redis.eval(redis, incr_by, ["n"], [10])

  ## Replies and errors

  Replies are `nil`, integers, binaries, floats, booleans, `:ok` (a status `OK`), lists
  (arrays, sets) and lists of `{key, value}` pairs (maps). Errors:

  | reason                         | when                                                  |
  |--------------------------------|-------------------------------------------------------|
  | `{:redis, code, detail}`       | the server refused the command (`"ERR"`, `"WRONGTYPE"`) |
  | `{:auth_failed, text}`         | a wrong user or password                              |
  | `{:unavailable, text}`         | no connection, a dropped link, a response timeout     |
  | `:timeout`                     | no reply within the call's `timeout:`                 |
  | `{:invalid_url, text}`         | `connect/2` of a URL that is not `redis://...`        |
  | `{:invalid_argument, term}`    | a command that is not a list of binaries and numbers  |
  | `{:invalid_option, detail}`    | an unknown option or a wrong type                     |

  A write that ended in `:timeout` or `{:unavailable, _}` may or may not have been applied;
  one that returned `{:ok, _}` was acknowledged by the server.
  """

  alias DSPex.Bridge.{Native, Options}

  @enforce_keys [:conn, :timeout]
  defstruct [:conn, :timeout]

  @typedoc "A connection, made by `connect/2`."
  @opaque t :: %__MODULE__{conn: reference(), timeout: timeout()}

  @typedoc "A command's words."
  @type command :: [binary() | integer() | float()]

  @typedoc "A reply."
  @type value ::
          nil | integer() | binary() | float() | boolean() | :ok | [value()] | [{value(), value()}]

  @type reason ::
          {:redis, binary(), binary()}
          | {:auth_failed, binary()}
          | {:unavailable, binary()}
          | :timeout
          | {:invalid_url, binary()}
          | {:invalid_argument, term()}
          | {:invalid_option, term()}

  defmodule Script do
    @moduledoc "A Lua script for `DSPex.Bridge.Redis.eval/5`, sent by its SHA-1 once loaded."
    @enforce_keys [:source, :sha]
    defstruct [:source, :sha]
    @type t :: %__MODULE__{source: binary(), sha: binary()}
  end

  @connect_opts %{
    username: &is_binary/1,
    password: &is_binary/1,
    connect_timeout: &Options.pos_ms?/1,
    timeout: &Options.pos_ms?/1,
    retries: &Options.non_neg_integer?/1,
    tls_ca_file: &is_binary/1,
    tls_cert_file: &is_binary/1,
    tls_key_file: &is_binary/1
  }
  @tls_files [tls_ca_file: :tls_ca, tls_cert_file: :tls_cert, tls_key_file: :tls_key]
  @call_opts %{timeout: &Options.timeout?/1}

  @doc """
  Connects to `url` (`redis://[user[:password]@]host[:port][/db]`, or `rediss://` for
  TLS), authenticating when a user or password is given (options win over the URL).

  Options: `username:`, `password:`, `connect_timeout:` ms for one dial (default 2,000),
  `timeout:` ms a call waits by default (default 5,000), `retries:` reconnect attempts per
  command after a dropped link (default 2). For `rediss://`: `tls_ca_file:` the PEM file
  of the CA that signed the server's certificate (default: the system's roots), and
  `tls_cert_file:` with `tls_key_file:` for a server that asks clients for a certificate.
  A server that is down or refuses the password is an error here, at start; so is a bad
  TLS file (`{:tls_file, path, reason}`, `{:invalid_tls, text}`) and a server whose
  certificate does not verify.
  """
  @spec connect(binary(), keyword()) :: {:ok, t()} | {:error, reason()}
  def connect(url, opts \\ [])

  def connect(url, opts) when is_binary(url) do
    with {:ok, nif_opts} <- connect_opts(opts) do
      timeout = nif_opts.response_timeout_ms

      case dial(&Native.redis_connect/4, url, nif_opts) do
        {:ok, conn} -> {:ok, %__MODULE__{conn: conn, timeout: timeout}}
        error -> error
      end
    end
  end

  def connect(url, _opts), do: {:error, {:invalid_url, inspect(url)}}

  defp connect_opts(opts) do
    with {:ok, o} <- Options.take(opts, @connect_opts),
         {:ok, tls} <- tls_files(o) do
      {:ok,
       Map.merge(tls, %{
         username: Map.get(o, :username),
         password: Map.get(o, :password),
         connect_timeout_ms: Map.get(o, :connect_timeout, 2_000),
         response_timeout_ms: Map.get(o, :timeout, 5_000),
         retries: Map.get(o, :retries, 2)
       })}
    end
  end

  # The TLS library skips what it cannot parse, which would show only as a failed
  # handshake later: a file without the PEM block it should hold is refused here.
  defp read_pem(path, key) do
    marker = if key == :tls_key, do: "PRIVATE KEY-----", else: "-----BEGIN CERTIFICATE-----"

    case File.read(path) do
      {:ok, pem} ->
        if String.contains?(pem, marker),
          do: {:ok, pem},
          else: {:error, {:invalid_tls, "#{path} holds no PEM #{String.trim(marker, "-")}"}}

      {:error, reason} ->
        {:error, {:tls_file, path, reason}}
    end
  end

  # The PEM files named by the TLS options, read here: `%{tls_ca: pem | nil, ...}`.
  defp tls_files(o) do
    cond do
      Map.has_key?(o, :tls_cert_file) != Map.has_key?(o, :tls_key_file) ->
        {:error, {:invalid_option, {:tls, "tls_cert_file: and tls_key_file: go together"}}}

      true ->
        Enum.reduce_while(@tls_files, {:ok, %{}}, fn {option, key}, {:ok, acc} ->
          case Map.fetch(o, option) do
            :error ->
              {:cont, {:ok, Map.put(acc, key, nil)}}

            {:ok, path} ->
              case read_pem(path, key) do
                {:ok, pem} -> {:cont, {:ok, Map.put(acc, key, pem)}}
                error -> {:halt, error}
              end
          end
        end)
    end
  end

  # The NIF bounds the dial by connect_timeout; this bound only guards against a reply lost
  # to a bug, and a late connection is then dropped with its message.
  defp dial(nif, url, nif_opts) do
    ref = make_ref()

    case nif.(url, nif_opts, self(), ref) do
      :ok ->
        receive do
          {:dspex_redis, ^ref, result} -> result
        after
          nif_opts.connect_timeout_ms + nif_opts.response_timeout_ms -> {:error, :timeout}
        end

      {:error, {:client, text}} ->
        if nif_opts.tls_ca || nif_opts.tls_cert,
          do: {:error, {:invalid_tls, text}},
          else: {:error, {:invalid_url, text}}

      {:error, _} = error ->
        error
    end
  end

  @doc """
  Opens a subscriber connection owned by the calling process, which then receives
  `{:dspex_redis_message, subscriber, channel, payload}` for every message on the channels
  it subscribed, and `{:dspex_redis_message, subscriber, :closed}` once the connection ended
  (the server went away: subscribe again on a new one). Options as for `connect/2`.
  """
  @spec subscriber(binary(), keyword()) :: {:ok, reference()} | {:error, reason()}
  def subscriber(url, opts \\ [])

  def subscriber(url, opts) when is_binary(url) do
    with {:ok, nif_opts} <- connect_opts(opts), do: dial(&Native.redis_subscriber/4, url, nif_opts)
  end

  def subscriber(url, _opts), do: {:error, {:invalid_url, inspect(url)}}

  @doc """
  Subscribes `subscriber` to `channels`; returns once the server confirmed, so nothing
  published afterwards is missed.
  """
  @spec subscribe(reference(), [binary()], timeout()) :: :ok | {:error, reason()}
  def subscribe(subscriber, channels, timeout \\ 5_000),
    do: subscription(subscriber, channels, true, timeout)

  @doc "Unsubscribes `subscriber` from `channels`."
  @spec unsubscribe(reference(), [binary()], timeout()) :: :ok | {:error, reason()}
  def unsubscribe(subscriber, channels, timeout \\ 5_000),
    do: subscription(subscriber, channels, false, timeout)

  @doc "Closes a subscriber connection."
  @spec close_subscriber(reference()) :: :ok
  def close_subscriber(subscriber), do: Native.redis_subscriber_close(subscriber)

  defp subscription(subscriber, [_ | _] = channels, subscribe, timeout)
       when is_reference(subscriber) do
    if Enum.all?(channels, &is_binary/1) and Options.timeout?(timeout) do
      ref = make_ref()
      :ok = Native.redis_subscribe(subscriber, channels, subscribe, self(), ref)

      # No cancellation here: a late confirmation is harmless and rare (the caller
      # gave up on a server that did not answer for `timeout`).
      receive do
        {:dspex_redis, ^ref, result} -> result
      after
        timeout -> {:error, :timeout}
      end
    else
      {:error, {:invalid_argument, {channels, timeout}}}
    end
  end

  defp subscription(_subscriber, channels, _subscribe, _timeout),
    do: {:error, {:invalid_argument, channels}}

  @doc """
  Runs one command. Option: `timeout:` (default the connection's).

      {:ok, "PONG"} = DSPex.Bridge.Redis.command(redis, ["PING"])
  """
  @spec command(t(), command(), keyword()) :: {:ok, value()} | {:error, reason()}
  def command(redis, command, opts \\ []) do
    with :ok <- check_command(command), do: send_commands(redis, [command], false, opts)
  end

  @doc """
  Runs `commands` in one round trip. The reply lists each command's result in order, a
  command the server refused as `{:error, reason}` in its place.
  """
  @spec pipeline(t(), [command()], keyword()) ::
          {:ok, [value() | {:error, reason()}]} | {:error, reason()}
  def pipeline(redis, commands, opts \\ []),
    do: with(:ok <- check_commands(commands), do: send_commands(redis, commands, false, opts))

  @doc """
  Runs `commands` inside `MULTI`/`EXEC`: all of them or, when one is malformed, none.
  """
  @spec transaction(t(), [command()], keyword()) ::
          {:ok, [value() | {:error, reason()}]} | {:error, reason()}
  def transaction(redis, commands, opts \\ []),
    do: with(:ok <- check_commands(commands), do: send_commands(redis, commands, true, opts))

  @doc "A script for `eval/5`: its source and SHA-1."
  @spec script(binary()) :: Script.t()
  def script(source) when is_binary(source) do
    sha = :crypto.hash(:sha, source) |> Base.encode16(case: :lower)
    %Script{source: source, sha: sha}
  end

  @doc """
  Runs `script` with `keys` and `args`: by its SHA-1, and with its source the first time a
  server has not seen it (so a restarted server is no problem).
  """
  @spec eval(t(), Script.t(), [binary()], [binary() | number()], keyword()) ::
          {:ok, value()} | {:error, reason()}
  def eval(redis, script, keys, args, opts \\ [])

  def eval(redis, %Script{sha: sha, source: source}, keys, args, opts)
      when is_list(keys) and is_list(args) do
    call = [length(keys) | keys ++ args]

    case command(redis, ["EVALSHA", sha | call], opts) do
      {:error, {:redis, "NOSCRIPT", _}} -> command(redis, ["EVAL", source | call], opts)
      other -> other
    end
  end

  def eval(_redis, script, keys, args, _opts),
    do: {:error, {:invalid_argument, {script, keys, args}}}

  defp send_commands(%__MODULE__{conn: conn, timeout: default}, commands, atomic, opts) do
    with {:ok, o} <- Options.take(opts, @call_opts) do
      ref = make_ref()
      {:ok, pending} = Native.redis_command(conn, commands, atomic, self(), ref)
      await(ref, pending, Map.get(o, :timeout, default))
    end
  end

  defp send_commands(redis, _commands, _atomic, _opts),
    do: {:error, {:invalid_argument, {:not_a_connection, redis}}}

  defp await(ref, pending, timeout) do
    receive do
      {:dspex_redis, ^ref, result} -> result
    after
      timeout ->
        case Native.redis_cancel(pending) do
          :cancelled ->
            {:error, :timeout}

          :sent ->
            receive do
              {:dspex_redis, ^ref, result} -> result
            end
        end
    end
  end

  defp check_commands(commands) do
    if Options.proper_list?(commands) and commands != [],
      do: Enum.find_value(commands, :ok, &error_of(check_command(&1))),
      else: {:error, {:invalid_argument, commands}}
  end

  defp error_of(:ok), do: nil
  defp error_of(error), do: error

  defp check_command([_ | _] = command) do
    if Options.proper_list?(command) and Enum.all?(command, &arg?/1),
      do: :ok,
      else: {:error, {:invalid_argument, command}}
  end

  defp check_command(command), do: {:error, {:invalid_argument, command}}

  defp arg?(arg) when is_integer(arg), do: arg >= -0x8000000000000000 and arg <= 0x7FFFFFFFFFFFFFFF
  defp arg?(arg), do: is_binary(arg) or is_float(arg)
end
