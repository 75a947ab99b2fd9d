defmodule DSPex.Bridge.EventsTest do
  use ExUnit.Case, async: false
  import DSPex.Bridge.TestHelpers

  alias DSPex.Bridge.{Events, SessionStore}

  doctest DSPex.Bridge.Events

  test "a prefix subscription receives exactly the events under it" do
    :ok = Events.subscribe([:dspex, :bridge, :variable, :write])
    s = session!()
    {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
    {:ok, _} = SessionStore.get_variable(s, :x)
    {:ok, _} = SessionStore.update_variable(s, :x, 2)

    assert_receive {:dspex_event, [:dspex, :bridge, :variable, :write], %{duration_us: d1},
                    %{session_id: ^s, name: :x, version: 1}}

    assert_receive {:dspex_event, [:dspex, :bridge, :variable, :write], %{duration_us: d2},
                    %{session_id: ^s, name: :x, version: 2}}

    assert is_integer(d1) and d1 >= 0 and is_integer(d2)
    refute_received {:dspex_event, [:dspex, :bridge, :variable, :read], _, _}
  end

  test "reads, deletes and session lifecycle events are emitted" do
    :ok = Events.subscribe([:dspex, :bridge])
    id = unique_id()
    {:ok, _} = SessionStore.create_session(id)
    assert_receive {:dspex_event, [:dspex, :bridge, :session, :created], _, %{session_id: ^id}}
    {:ok, _} = SessionStore.register_variable(id, :x, :integer, 1)
    {:ok, _} = SessionStore.get_variable(id, :x)

    assert_receive {:dspex_event, [:dspex, :bridge, :variable, :read], %{duration_us: _},
                    %{session_id: ^id, name: :x}}

    :ok = SessionStore.delete_variable(id, :x)
    assert_receive {:dspex_event, [:dspex, :bridge, :variable, :delete], _, %{name: :x}}
    :ok = SessionStore.delete_session(id)
    assert_receive {:dspex_event, [:dspex, :bridge, :session, :deleted], _, %{session_id: ^id}}
  end

  test "failed operations emit no write event" do
    :ok = Events.subscribe([:dspex, :bridge, :variable])
    s = session!()
    {:ok, _} = SessionStore.register_variable(s, :x, :integer, 1)
    assert_receive {:dspex_event, _, _, %{version: 1}}
    {:error, _} = SessionStore.update_variable(s, :x, "nope")
    refute_receive {:dspex_event, [:dspex, :bridge, :variable, :write], _, _}, 50
  end

  test "subscribing twice delivers once; unsubscribe stops delivery" do
    :ok = Events.subscribe([:test_events])
    :ok = Events.subscribe([:test_events])
    Events.emit([:test_events, :ping], %{}, %{})
    assert_receive {:dspex_event, [:test_events, :ping], _, _}
    refute_received {:dspex_event, [:test_events, :ping], _, _}
    :ok = Events.unsubscribe([:test_events])
    Events.emit([:test_events, :ping], %{}, %{})
    refute_receive {:dspex_event, _, _, _}, 20
  end

  test "the empty prefix receives everything" do
    :ok = Events.subscribe([])
    Events.emit([:anything, :at_all], %{n: 1}, %{})
    assert_receive {:dspex_event, [:anything, :at_all], %{n: 1}, %{}}
    :ok = Events.unsubscribe([])
  end

  test "a subscriber that exits stops counting as a listener" do
    before = Events.subscription_count()

    pid =
      spawn(fn ->
        :ok = Events.subscribe([:a])
        :ok = Events.subscribe([:b])
        receive do: (:stop -> :ok)
      end)

    eventually(fn -> Events.subscription_count() == before + 2 end)
    ref = Process.monitor(pid)
    send(pid, :stop)
    assert_receive {:DOWN, ^ref, _, _, _}
    eventually(fn -> Events.subscription_count() == before end)
  end

  test "bad prefixes are refused" do
    assert {:error, {:invalid_prefix, "x"}} = Events.subscribe("x")
    assert {:error, {:invalid_prefix, [:a, "b"]}} = Events.subscribe([:a, "b"])
    assert {:error, {:invalid_prefix, 3}} = Events.unsubscribe(3)
  end
end
