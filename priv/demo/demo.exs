# The dspex_bridge tour: `make demo` (or `mix dspex.demo`).
alias DSPex.Bridge.{AccessControl, DependencyManager, SessionStore}

defmodule Demo do
  def section(title), do: IO.puts("\n== #{title}")
  def say(text), do: IO.puts("   " <> text)

  # Until `fun` answers {:ok, _}: a killed worker is back within moments.
  def retry(fun, left \\ 100) do
    case fun.() do
      {:ok, _} = ok -> ok
      _ when left > 0 -> Process.sleep(100) && retry(fun, left - 1)
      error -> error
    end
  end
end

Demo.section("Sessions and typed variables")
{:ok, session} = SessionStore.create_session("demo_session", ttl: 60_000)
Demo.say("created session #{inspect(session)} (expires after 60 s idle)")

{:ok, _} =
  SessionStore.register_variable(session, :temperature, :float, 0.7,
    constraints: [min: 0.0, max: 2.0],
    description: "sampling temperature"
  )

{:ok, _} =
  SessionStore.register_variable(session, "strategy", :choice, "chain_of_thought",
    constraints: [choices: ["predict", "chain_of_thought", "react"]]
  )

{:ok, _} =
  SessionStore.register_variable(session, :query_embedding, :embedding, [0.1, 0.2, 0.3],
    constraints: [dimensions: 3]
  )

{:ok, vars} = SessionStore.list_variables(session)

for v <- vars,
    do: Demo.say("#{inspect(v.name)} : #{v.type} = #{inspect(v.value)} (version #{v.version})")

Demo.section("Constraints are checked on every write")

Demo.say(
  "temperature = 3.5 -> #{inspect(SessionStore.update_variable(session, :temperature, 3.5))}"
)

Demo.say(
  "strategy = \"guess\" -> #{inspect(SessionStore.update_variable(session, "strategy", "guess"))}"
)

Demo.section("A watcher sees every change")

watcher =
  spawn(fn ->
    for _ <- 1..3 do
      receive do
        {:dspex_variable_changed, _sid, name, %{old: old, new: new, version: v}} ->
          Demo.say("[watcher] #{inspect(name)}: #{inspect(old)} -> #{inspect(new)} (v#{v})")
      end
    end
  end)

{:ok, _} = SessionStore.watch(session, :temperature, pid: watcher)

Demo.section("Versioned updates with optimistic locking")
{:ok, v2} = SessionStore.update_variable(session, :temperature, 0.9, expected_version: 1)
Demo.say("optimizer A wrote 0.9 expecting version 1 -> now version #{v2.version}")
{:ok, v3} = SessionStore.update_variable(session, :temperature, 1.1, expected_version: 2)
Demo.say("optimizer A wrote 1.1 expecting version 2 -> now version #{v3.version}")
conflict = SessionStore.update_variable(session, :temperature, 0.2, expected_version: 1)
Demo.say("optimizer B wrote 0.2 expecting version 1 -> #{inspect(conflict)}: B must re-read")

Demo.section("History and rollback")
{:ok, history} = SessionStore.get_history(session, :temperature)
for e <- history, do: Demo.say("v#{e.version}: #{inspect(e.value)} (#{inspect(e.change)})")
{:ok, rolled} = SessionStore.rollback_variable(session, :temperature, 1)
Demo.say("rolled back to version 1's value: #{rolled.value}, written as version #{rolled.version}")
Process.sleep(50)

Demo.section("Sessions are isolated")
{:ok, _} = SessionStore.create_session("other_session")
{:ok, _} = SessionStore.register_variable("other_session", :secret, :string, "hidden")
denied = SessionStore.get_variable(session, :temperature, caller: "other_session")
Demo.say("other_session reads demo_session's temperature -> #{inspect(denied)}")

Demo.section("Export and import (checksummed snapshot)")
{:ok, snapshot} = SessionStore.export_session(session)
Demo.say("exported #{byte_size(snapshot)} bytes")
<<head::binary-size(30), byte, rest::binary>> = snapshot
corrupt = <<head::binary, Bitwise.bxor(byte, 1), rest::binary>>

Demo.say(
  "import of a copy with one flipped bit -> #{inspect(SessionStore.import_session(corrupt))}"
)

{:ok, copy} = SessionStore.import_session(snapshot, session_id: "demo_copy")
{:ok, t} = SessionStore.get_value(copy, :temperature)
Demo.say("imported as #{inspect(copy)}: temperature = #{t}")

Demo.section("A computed pipeline (dependency graph)")
{:ok, p} = SessionStore.create_session("demo_pipeline")
{:ok, _} = SessionStore.register_variable(p, :examples, :integer, 40)
{:ok, _} = SessionStore.register_variable(p, :batch_size, :integer, 8)

{:ok, _} =
  SessionStore.register_variable(p, :steps, :integer, nil,
    compute: {fn %{examples: e, batch_size: b} -> div(e, b) end, [:examples, :batch_size]}
  )

{:ok, _} =
  SessionStore.register_variable(p, :budget, :float, nil,
    compute: {fn %{steps: s} -> s * 0.02 end, [:steps]}
  )

{:ok, order} = DependencyManager.get_update_order(p, :batch_size)
Demo.say("update order after batch_size changes: #{inspect(order)}")
{:ok, _} = SessionStore.update_variable(p, :batch_size, 4)
{:ok, steps} = SessionStore.get_value(p, :steps)
{:ok, budget} = SessionStore.get_value(p, :budget)
Demo.say("batch_size = 4 -> steps = #{steps}, budget = #{budget} (recomputed in order)")

Demo.say(
  "add budget -> examples? #{inspect(DependencyManager.add_dependency(p, :budget, :examples))}"
)

{:ok, path} = DependencyManager.cycle_path(p, :budget, :examples)
Demo.say("the cycle it would close: #{Enum.map_join(path, " -> ", &inspect/1)}")

Demo.say("batch_size = 0 makes steps divide by zero:")
{:ok, _} = SessionStore.update_variable(p, :batch_size, 0)
{:ok, s_var} = SessionStore.get_variable(p, :steps)
{:ok, b_var} = SessionStore.get_variable(p, :budget)
Demo.say("steps keeps #{s_var.value}, stale: #{inspect(elem(s_var.stale, 0))}")
Demo.say("budget keeps #{b_var.value}, stale: #{inspect(b_var.stale)}")
{:ok, _} = SessionStore.update_variable(p, :batch_size, 10)
{:ok, s_var} = SessionStore.get_variable(p, :steps)
Demo.say("batch_size = 10 -> steps = #{s_var.value}, stale: #{inspect(s_var.stale)}")

Demo.section("Access control between sessions")
{:ok, team} = SessionStore.create_session("demo_team")

{:ok, _} =
  SessionStore.register_variable(team, :prompt, :string, "Answer briefly.",
    access_rules: [
      [id: "admins", session_pattern: "admin_*", permissions: [:write]],
      [id: "no_interns", session_pattern: {:suffix, "_intern"}, permissions: [:read], effect: :deny]
    ]
  )

for caller <- ["guest", "admin_ann", "admin_intern"] do
  read = SessionStore.get_value(team, :prompt, caller: caller)
  write = SessionStore.update_variable(team, :prompt, "Think step by step.", caller: caller)
  Demo.say("#{caller}: read -> #{inspect(read)}, write -> #{inspect(elem(write, 0))}")
end

{:ok, why} = AccessControl.explain({team, :prompt}, "admin_intern", :write)
Demo.say("why is admin_intern refused? #{inspect(why)} (deny wins at equal priority)")
{:ok, why} = AccessControl.explain({team, :prompt}, "guest", :read)
Demo.say("and guest? #{inspect(why)} (private by default)")

Demo.section("Three optimizers compete for one variable")
alias DSPex.Bridge.OptimizerCoordinator
{:ok, _} = SessionStore.register_variable(team, :lr, :float, 0.1)
parent = self()

crasher =
  spawn(fn ->
    {:ok, _} = OptimizerCoordinator.acquire_lock(:lr, "crasher", self(), session_id: team)
    send(parent, :crasher_holds)
    receive do: (:crash -> exit(:boom))
  end)

receive do: (:crasher_holds -> Demo.say("crasher holds :lr"))

patient =
  spawn(fn ->
    {:ok, lock} =
      OptimizerCoordinator.acquire_lock(:lr, "patient", self(),
        session_id: team,
        priority: 1,
        timeout: 5_000
      )

    send(parent, {:patient_holds, lock.token})

    receive do
      {:optimization_preempted, :lr, _info} -> send(parent, :patient_notified)
    end

    receive do
      {:lock_lost, :lr, reason, _held_ms} -> send(parent, {:patient_lost, reason})
    end
  end)

Stream.repeatedly(fn -> OptimizerCoordinator.get_lock_info(:lr, session_id: team) end)
|> Enum.find(&match?({:ok, %{waiters: [_]}}, &1))

Demo.say("patient waits behind it; the crasher dies mid-run")
send(crasher, :crash)

receive do
  {:patient_holds, token} -> Demo.say("the lock passed to patient at once (token #{token})")
end

urgent =
  Task.async(fn ->
    # The task waits for the grant; the lock is held on behalf of the demo process.
    OptimizerCoordinator.acquire_lock(:lr, "urgent", parent,
      session_id: team,
      priority: 9,
      conflict_resolution: :preempt,
      grace_ms: 50
    )
  end)

receive do:
          (:patient_notified ->
             Demo.say("urgent (priority 9) preempts: patient is told and gets 50 ms grace"))

receive do: ({:patient_lost, reason} -> Demo.say("patient lost the lock: #{reason}"))
{:ok, urgent_lock} = Task.await(urgent)

{:ok, v} = SessionStore.update_variable(team, :lr, 0.05, lock_token: urgent_lock.token)
Demo.say("urgent writes lr = #{v.value} with its token")
late = SessionStore.update_variable(team, :lr, 0.5)
Demo.say("a write without the token -> #{inspect(late)}")
:ok = OptimizerCoordinator.release_lock(:lr, "urgent", session_id: team)
Process.exit(patient, :kill)

Demo.section("Python tools read and write the session (priv/demo/demo_tools.py)")
alias DSPex.Bridge.{CircuitBreaker, Python, PythonWorker}
examples = Path.dirname(__ENV__.file)

{:ok, _} =
  PythonWorker.start_pool(:demo_python, size: 2, modules: ["demo_tools"], python_path: [examples])

:ok = CircuitBreaker.start_breaker(:demo_tools_breaker, [])

py = fn session, tool, args ->
  Python.call(session, tool, args, pool: :demo_python, breaker: :demo_tools_breaker)
end

{:ok, t} = py.(session, "warm_up", %{factor: 1.25})
{:ok, var} = SessionStore.get_variable(session, :temperature)

Demo.say(
  "Python raised demo_session's temperature to #{t}; Elixir reads #{var.value} (version #{var.version})"
)

{:ok, answer} = py.(session, "stale_write", %{version: 1})
Demo.say("Python writing with a stale version -> #{answer}")
{:ok, answer} = py.(session, "peek", %{session: "other_session", name: "secret"})
Demo.say("Python reading another session's private variable -> #{answer}")
{:ok, before} = py.(session, "pid", %{})
System.cmd("kill", ["-9", Integer.to_string(before)])
{:ok, after_kill} = Demo.retry(fn -> py.(session, "pid", %{}) end)
Demo.say("worker #{before} killed with -9; the pool answers from #{after_kill}")

Demo.section("A DSPy program tuned from Elixir (priv/demo/dspy_qa.py, DSPy's DummyLM)")
alias DSPex.Bridge.Python.CandidateSearch

{:ok, _} =
  PythonWorker.start_pool(:demo_dspy, size: 1, modules: ["dspy_qa"], python_path: [examples])

dspy_session = "demo_dspy_session"
{:ok, _} = SessionStore.create_session(dspy_session)
dspy_opts = [pool: :demo_dspy, breaker: :demo_tools_breaker]
dspy = fn tool, args -> Python.call(dspy_session, tool, args, [timeout: 30_000] ++ dspy_opts) end
{:ok, %{"registered" => params}} = dspy.("qa.register_parameters", %{})
Demo.say("the program's parameters are session variables: #{Enum.join(Enum.sort(params), ", ")}")
sums = fn answers -> for {q, a} <- answers, do: %{question: q, answer: a} end

{:ok, search} =
  CandidateSearch.run(
    dspy_session,
    "qa",
    dspy_opts ++
      [
        call_timeout: 30_000,
        devset: [{%{question: "2+3?"}, %{answer: "5"}}, {%{question: "4+4?"}, %{answer: "8"}}],
        candidates: [
          %{"qa.instructions" => "Guess.", "qa.demos" => sums.([{"2+3?", "6"}, {"4+4?", "8"}])},
          %{"qa.instructions" => "Add.", "qa.demos" => sums.([{"2+3?", "5"}, {"4+4?", "8"}])}
        ]
      ]
  )

Demo.say(
  "an optimizer held the locks, scored #{inspect(search.scores)} through Python, kept \"#{search.best["qa.instructions"]}\""
)

{:ok, %{"answer" => sum}} = dspy.("qa", %{question: "2+3?"})
Demo.say("the program now answers 2+3? with #{sum}")
:ok = SessionStore.delete_session(dspy_session)
:ok = PythonWorker.stop_pool(:demo_dspy)

Demo.section("A remote Python worker dials in over gRPC with the pool's token")
token = Base.url_encode64(:crypto.strong_rand_bytes(24))

{:ok, _} = PythonWorker.start_pool(:demo_remote, size: 0, accept_remote: [token: token])

{host, port} = PythonWorker.listen_address()
python = Application.get_env(:dspex_bridge, :python) || System.get_env("DSPEX_PYTHON") || "python3"
sdk = Path.join(:code.priv_dir(:dspex_bridge), "python")

remote =
  Port.open({:spawn_executable, System.find_executable(python)}, [
    :binary,
    args:
      ["-m", "dspex_bridge.worker", "--connect", "#{host}:#{port}", "--pool", "demo_remote"] ++
        ["--module", "demo_tools"],
    env: [
      {~c"PYTHONPATH", ~c"#{sdk}:#{examples}"},
      {~c"DSPEX_BRIDGE_TOKEN", String.to_charlist(token)}
    ]
  ])

{:os_pid, remote_os_pid} = Port.info(remote, :os_pid)
{:ok, _} = Demo.retry(fn -> PythonWorker.call(:demo_remote, "echo", %{value: :ok}) end)
[worker] = PythonWorker.workers(:demo_remote)

Demo.say(
  "joined from #{worker.peer} (remote: #{worker.remote}), serving #{length(worker.tools)} tools"
)

{:ok, t} =
  Python.call(session, "warm_up", %{factor: 1.1}, pool: :demo_remote, breaker: :demo_tools_breaker)

Demo.say("the remote worker raised the temperature to #{t}, as the call's session")

{wrong, status} =
  System.cmd(
    python,
    [
      "-m",
      "dspex_bridge.worker",
      "--connect",
      "#{host}:#{port}",
      "--pool",
      "demo_remote",
      "--token",
      "guess"
    ],
    env: [{"PYTHONPATH", sdk}],
    stderr_to_stdout: true
  )

Demo.say("a worker with a wrong token: exit #{status}, #{String.trim(wrong)}")
:ok = PythonWorker.stop_pool(:demo_remote)
System.cmd("kill", [Integer.to_string(remote_os_pid)])

Demo.section("A sick Python worker cannot drag the BEAM down")

:ok =
  CircuitBreaker.start_breaker(:demo_python,
    failure_threshold: 3,
    open_timeout_ms: 300,
    jitter: 0.0,
    half_open_calls: 2
  )

{:ok, _} = SessionStore.register_variable(team, :score, :float, 0.0)
{:ok, v} = Python.fetch_variable(team, :score, "echo", %{value: 0.82}, pool: :demo_python)
Demo.say("Python computed score = #{v.value}")

for i <- 1..3 do
  r = Python.call(team, "raise", %{message: "CUDA out of memory"}, pool: :demo_python)
  Demo.say("call #{i}: #{inspect(r)}")
end

{:ok, state} = CircuitBreaker.state(:demo_python)
Demo.say("breaker is now #{state}")
{us, r} = :timer.tc(fn -> Python.call(team, "echo", %{value: 1}, pool: :demo_python) end)
Demo.say("next call -> #{inspect(r)} in #{us} us, without reaching Python")
{:ok, v} = Python.fetch_variable(team, :score, "echo", %{value: 0.9}, pool: :demo_python)
Demo.say("score served from the last good value: #{v.value}, stale: #{inspect(v.stale)}")
Process.sleep(320)

for _ <- 1..2,
    do: {:ok, _} = Python.call(team, "echo", %{value: 1}, pool: :demo_python)

{:ok, state} = CircuitBreaker.state(:demo_python)
Demo.say("after the wait, two probes succeeded: breaker is #{state}")
:ok = PythonWorker.stop_pool(:demo_python)

Demo.section("Analytics: the dashboard and the Prometheus export")
alias DSPex.Bridge.Analytics
{:ok, dashboard} = Analytics.get_dashboard(:last_minute)

for {k, v} <- Enum.sort(Map.delete(dashboard, :range)) do
  shown = if is_float(v), do: Float.round(v, 3), else: inspect(v)
  Demo.say("#{k}: #{shown}")
end

{:ok, prometheus} = Analytics.export_metrics(:prometheus)
Demo.say("Prometheus text (#{length(String.split(prometheus, "\n"))} lines), first metrics:")

prometheus
|> String.split("\n")
|> Enum.reject(&String.starts_with?(&1, "#"))
|> Enum.take(8)
|> Enum.each(&Demo.say("  " <> &1))

for s <- [session, "other_session", copy, p, team], do: :ok = SessionStore.delete_session(s)

Demo.section("HA: a session migrates to another node while a client writes")
alias DSPex.Bridge.HAManager
alias DSPex.Bridge.HAManager.LocalCluster
# This node becomes dspex_demo@127.0.0.1 (epmd is started if needed) and starts a peer.
:ok = LocalCluster.ensure_distributed(:dspex_demo, weight: 1.0)
{:ok, [peer]} = LocalCluster.start_peers(["demo_peer"])
Demo.say("cluster: #{inspect(Map.keys(HAManager.members()))}")
{:ok, "travelling"} = SessionStore.create_session("travelling")

for i <- 1..1_000,
    do: {:ok, _} = SessionStore.register_variable("travelling", "v#{i}", :integer, i)

{:ok, _} = SessionStore.register_variable("travelling", :counter, :integer, 0)
{:ok, epoch} = HAManager.register_session("travelling")
Demo.say("registered here at epoch #{inspect(epoch)}, replicated to #{inspect(peer)}")
demo = self()

writer =
  spawn_link(fn ->
    acked =
      Enum.reduce_while(1..1_000_000, 0, fn i, _ ->
        receive do
          :stop -> {:halt, i - 1}
        after
          0 ->
            {:ok, _} = SessionStore.update_variable("travelling", :counter, i)
            {:cont, i}
        end
      end)

    send(demo, {:acked, acked})
  end)

Process.sleep(50)
{:ok, info} = HAManager.migrate_session("travelling", peer)

Demo.say(
  "migrated to #{peer}: #{info.bytes} bytes in #{info.duration_ms} ms, epoch #{inspect(info.epoch)}"
)

Process.sleep(50)
send(writer, :stop)
acked = receive do: ({:acked, n} -> n)
{:ok, owner} = HAManager.get_session_owner("travelling")
{:ok, counter} = SessionStore.get_variable("travelling", :counter)

Demo.say(
  "owner now #{owner}; the client's #{acked} acknowledged writes: counter = #{counter.value} (read through this node, routed to the owner)"
)

:ok = LocalCluster.stop_peers([peer])
Demo.section("Done")
