defmodule DSPex.Bridge.Analytics.HTTPExporter do
  @moduledoc """
  `/metrics` over HTTP for Prometheus, on OTP's `:inets` httpd (no dependencies).

  Off by default. Start it from config (`config :dspex_bridge, :metrics_http, port: 9568`)
  or by hand:

      {:ok, pid, port} = DSPex.Bridge.Analytics.HTTPExporter.start(port: 0)
      # then: curl http://127.0.0.1:PORT/metrics

  It listens on the loopback interface unless `ip:` says otherwise (a tuple such as
  `{0, 0, 0, 0}`); `port: 0` picks a free port. Any other path answers 404.

  In a supervision tree: `{DSPex.Bridge.Analytics.HTTPExporter, port: 9568}` listens while
  the child runs.
  """

  require Record
  Record.defrecordp(:mod, Record.extract(:mod, from_lib: "inets/include/httpd.hrl"))

  @doc "A child spec: the listener of `start/1` for as long as the child runs."
  def child_spec(opts) do
    DSPex.Bridge.Installation.child_spec(%{
      id: {__MODULE__, if(DSPex.Bridge.Options.keyword?(opts), do: opts[:port], else: nil)},
      install: {__MODULE__, :install, [opts]},
      uninstall: {__MODULE__, :stop}
    })
  end

  @doc false
  # The listener, linked to the calling process (its child spec's).
  def install(opts) do
    with {:ok, pid, _port} <- start(opts) do
      Process.link(pid)
      {:ok, pid}
    end
  end

  @doc """
  Starts a listener: `{:ok, pid, port}`. Options: `port:` (default 9568), `ip:` (default
  `{127, 0, 0, 1}`).
  """
  @spec start(keyword()) :: {:ok, pid(), :inet.port_number()} | {:error, term()}
  def start(opts \\ []) do
    spec = %{port: &DSPex.Bridge.Options.int_in?(&1, 0, 65_535), ip: &ip?/1}

    with {:ok, o} <- DSPex.Bridge.Options.take(opts, spec) do
      listen(Map.get(o, :port, 9568), Map.get(o, :ip, {127, 0, 0, 1}))
    end
  end

  defp ip?(ip), do: is_tuple(ip) and is_list(:inet.ntoa(ip))

  defp listen(port, ip) do
    root = String.to_charlist(System.tmp_dir!())

    with {:ok, _} <- Application.ensure_all_started(:inets),
         {:ok, pid} <-
           :inets.start(:httpd,
             port: port,
             bind_address: ip,
             server_name: ~c"dspex_metrics",
             server_root: root,
             document_root: root,
             modules: [__MODULE__]
           ) do
      {:ok, pid, Keyword.fetch!(:httpd.info(pid), :port)}
    end
  end

  @doc "Stops a listener started by `start/1`."
  @spec stop(pid()) :: :ok | {:error, term()}
  def stop(pid) when is_pid(pid) do
    services = if Process.whereis(:inets_sup), do: :inets.services(), else: []

    if is_list(services) and {:httpd, pid} in services,
      do: :inets.stop(:httpd, pid),
      else: {:error, {:not_a_listener, pid}}
  end

  def stop(other), do: {:error, {:not_a_listener, other}}

  @doc false
  # The httpd callback.
  def unquote(:do)(request) do
    case {mod(request, :method), path(mod(request, :request_uri))} do
      {~c"GET", ~c"/metrics"} ->
        {:ok, body} = DSPex.Bridge.Analytics.export_metrics(:prometheus, :last_minute)

        head = [
          code: 200,
          content_type: ~c"text/plain; version=0.0.4; charset=utf-8",
          content_length: Integer.to_charlist(byte_size(body))
        ]

        {:proceed, [response: {:response, head, [body]}]}

      _ ->
        {:proceed, [response: {404, ~c"not found"}]}
    end
  end

  defp path(uri), do: uri |> :string.split(~c"?") |> hd()
end
