defmodule Snakepit.Bridge.RandomTermsTest do
  # Thousands of random and hostile Elixir terms thrown at every
  # SessionStore function. The NIF runs inside this VM, so a term it cannot
  # take must come back as an error (or an ArgumentError), never as a crash.
  # Seeded with :rand (no StreamData: no hex); every failure message carries
  # the seed, and SNAKEPIT_RANDOM_SEED=<n> replays a run.
  use ExUnit.Case, async: false

  import Bitwise

  alias Snakepit.Bridge.{SessionStore, Variable}

  @moduletag timeout: 120_000

  @rounds 4_000
  @default_seed 20_260_521

  # Variables of every type registered up front, so updates hit real variables.
  @typed [
    {"f", :float, 0.5, %{min: 0.0, max: 2.0}},
    {"i", :integer, 1, %{}},
    {"s", :string, "x", %{max_length: 100}},
    {"b", :boolean, true, %{}},
    {"c", :choice, "a", %{choices: ["a", "b"]}},
    {"m", :module, "Mod", %{}},
    {"e", :embedding, [1.0, 2.0], %{dimensions: 2}},
    {"t", :tensor, %{shape: [2], data: [1.0, 2.0]}, %{}}
  ]

  @types [:float, :integer, :string, :boolean, :choice, :module, :embedding, :tensor]

  setup_all do
    seed =
      case System.get_env("SNAKEPIT_RANDOM_SEED") do
        nil -> @default_seed
        text -> String.to_integer(text)
      end

    # Built once: each is costly to make and cheap to pass around.
    big = %{
      long: String.duplicate("x", 4 * 1024 * 1024 + 17),
      long_unicode: String.duplicate("é", 2 * 1024 * 1024 + 1),
      big_meta: Map.new(1..5_000, &{"k#{&1}", String.duplicate("v", 20)}),
      big_list: Enum.to_list(1..200_000),
      deep_list: nest(100_000, 1.0, &[&1]),
      deep_map: nest(1_000, 1, &%{"a" => &1})
    }

    %{seed: seed, big: big}
  end

  test "every SessionStore function answers a documented shape, or raises ArgumentError", %{
    seed: seed,
    big: big
  } do
    :rand.seed(:exsss, {seed, seed + 1, seed + 2})
    sid = "random-terms-#{seed}-#{System.unique_integer([:positive])}"
    {:ok, _} = SessionStore.create_session(sid)
    on_exit(fn -> SessionStore.delete_session(sid) end)

    for {name, type, value, constraints} <- @typed do
      {:ok, _} = SessionStore.register_variable(sid, name, type, value, constraints: constraints)
    end

    started = System.monotonic_time(:millisecond)
    ctx = %{sid: sid, seed: seed, big: big}

    # Failures are collected (one per operation and kind of wrong answer) so a
    # run reports every distinct problem, not only the first.
    {seen, failures} =
      Enum.reduce(1..@rounds, {versions(sid, seed, %{}), %{}}, fn round, {seen, failures} ->
        {op, args, fun, check} = operation(ctx)
        outcome = call(fun)
        cleanup(outcome)

        failures =
          if outcome_ok?(outcome, check),
            do: failures,
            else:
              Map.put_new(
                failures,
                {op, kind(outcome)},
                "round #{round}: #{op}(#{describe(args)}) gave #{describe(outcome)}"
              )

        seen = if rem(round, 200) == 0, do: versions(sid, seed, seen), else: seen
        {seen, failures}
      end)

    assert failures == %{},
           "seed #{seed}: #{map_size(failures)} kinds of wrong answers:\n\n" <>
             Enum.join(Map.values(failures), "\n\n")

    # Every variable (those registered by the run included) is readable, and
    # no version went back.
    final = versions(sid, seed, seen)
    assert map_size(final) >= length(@typed)
    assert Map.keys(seen) -- Map.keys(final) == [], "seed #{seed}: variables vanished"
    elapsed = System.monotonic_time(:millisecond) - started
    assert elapsed < 60_000, "seed #{seed}: #{@rounds} rounds took #{elapsed} ms"
  end

  # Reads every variable with get_variable; checks versions only grew since `seen`.
  defp versions(sid, seed, seen) do
    {:ok, vars} = SessionStore.list_variables(sid)

    Map.new(vars, fn %Variable{id: id, name: name} ->
      assert {:ok, %Variable{id: ^id, version: version}} = SessionStore.get_variable(sid, name),
             "seed #{seed}: variable #{name} unreadable"

      assert is_integer(version) and version >= Map.get(seen, id, 1),
             "seed #{seed}: #{name} went from version #{Map.get(seen, id)} to #{version}"

      {id, version}
    end)
  end

  # -- the operations -------------------------------------------------------------

  # {name, args, the call, which shapes it may answer}
  defp operation(ctx) do
    case :rand.uniform(9) do
      1 ->
        args = [session(ctx), name(ctx), type(), value(ctx), register_opts(ctx)]

        {:register_variable, args, fn -> apply(SessionStore, :register_variable, args) end,
         :ok_tuple}

      2 ->
        args = [session(ctx), identifier(ctx), value(ctx), metadata(ctx)]
        {:update_variable, args, fn -> apply(SessionStore, :update_variable, args) end, :ok}

      3 ->
        args = [
          session(ctx),
          identifier(ctx),
          value(ctx),
          metadata(ctx),
          [expected_version: pick([0, 1, 2, 1 <<< 40])]
        ]

        {:put_variable, args, fn -> apply(SessionStore, :put_variable, args) end, :ok_tuple}

      4 ->
        updates = for _ <- 0..:rand.uniform(6), do: {identifier(ctx), value(ctx)}
        updates = if :rand.uniform(2) == 1, do: updates, else: Map.new(updates)
        args = [session(ctx), updates, [atomic: pick([true, false]), metadata: metadata(ctx)]]

        {:update_variables, args, fn -> apply(SessionStore, :update_variables, args) end,
         :ok_tuple}

      5 ->
        ids = for _ <- 0..:rand.uniform(6), do: identifier(ctx)
        args = [session(ctx), pick([ids, ids, Enum.map(1..20_000, fn _ -> "f" end)])]
        {:get_variables, args, fn -> apply(SessionStore, :get_variables, args) end, :ok_tuple}

      6 ->
        args = [
          session(ctx),
          pick([nil, "*", "f*", "?", "**", "[", "\\", ctx.big.long, <<255>>, "é*"])
        ]

        {:list_variables, args, fn -> apply(SessionStore, :list_variables, args) end, :ok_tuple}

      7 ->
        ids = for _ <- 0..:rand.uniform(4), do: identifier(ctx)

        opts = [
          include_initial: pick([true, false]),
          since_versions: pick([%{}, %{"f" => 1}, %{"i" => 1 <<< 62}])
        ]

        args = [session(ctx), ids, opts]
        {:watch_variables, args, fn -> apply(SessionStore, :watch_variables, args) end, :ok_tuple}

      8 ->
        args = [
          pick([new_session_id(), new_session_id(), hostile_text(ctx)]),
          [ttl: pick([1, 60, 0.5]), metadata: metadata(ctx)]
        ]

        {:create_session, args, fn -> apply(SessionStore, :create_session, args) end, :ok_tuple}

      9 ->
        args = [session(ctx), identifier(ctx)]
        {:get_variable, args, fn -> apply(SessionStore, :get_variable, args) end, :ok_tuple}
    end
  end

  defp call(fun) do
    {:returned, fun.()}
  rescue
    e in ArgumentError -> {:raised, e}
    e -> {:bad_raise, e, __STACKTRACE__}
  catch
    kind, reason -> {:bad_exit, kind, reason}
  end

  defp kind({:returned, result}) when is_tuple(result), do: {:returned, elem(result, 0)}
  defp kind({:returned, result}), do: {:returned, result}
  defp kind({:bad_raise, e, _}), do: {:raised, e.__struct__, Map.get(e, :original)}
  defp kind(other), do: elem(other, 0)

  defp outcome_ok?({:raised, %ArgumentError{}}, _), do: true
  defp outcome_ok?({:returned, :ok}, :ok), do: true
  defp outcome_ok?({:returned, {:ok, _}}, :ok_tuple), do: true
  defp outcome_ok?({:returned, {:partial, _, _}}, _), do: true
  defp outcome_ok?({:returned, {:error, reason}}, _), do: reason?(reason)
  defp outcome_ok?(_, _), do: false

  # The documented reasons: :not_found, or {kind, detail}.
  defp reason?(:not_found), do: true
  defp reason?({kind, _}) when is_atom(kind), do: true
  defp reason?(_), do: false

  # Watches and sessions the run made are ended at once, so they do not pile up.
  defp cleanup({:returned, {:ok, ref}}) when is_reference(ref),
    do: SessionStore.unwatch_variables(ref)

  defp cleanup({:returned, {:ok, %{id: id, ttl_ms: _}}}), do: SessionStore.delete_session(id)

  defp cleanup(_), do: :ok

  # -- the generators ---------------------------------------------------------------

  defp pick(list), do: Enum.random(list)

  # Mostly the run's session, sometimes a missing or malformed one.
  defp session(ctx) do
    case :rand.uniform(20) do
      n when n <= 16 -> ctx.sid
      17 -> "missing-#{:rand.uniform(1000)}"
      18 -> hostile_text(ctx)
      19 -> pick([nil, :atom, 42, {:a}, ~c"charlist"])
      20 -> ""
    end
  end

  defp new_session_id, do: "random-new-#{System.unique_integer([:positive])}"

  # Mostly existing names, so writes land and versions move.
  defp identifier(ctx) do
    case :rand.uniform(10) do
      n when n <= 6 -> pick(Enum.map(@typed, &elem(&1, 0)))
      7 -> pick([:f, :i, :t, :missing])
      8 -> "r#{:rand.uniform(50)}"
      9 -> hostile_text(ctx)
      10 -> pick([nil, true, 1, 1.5, [], %{}, {:f}, self()])
    end
  end

  defp name(ctx) do
    case :rand.uniform(6) do
      n when n <= 4 -> "r#{:rand.uniform(50)}"
      5 -> pick([:atom_name, :"with space", :ünï])
      6 -> pick([hostile_text(ctx), nil, 42, "", String.duplicate("n", 300)])
    end
  end

  defp type do
    case :rand.uniform(8) do
      n when n <= 6 -> pick(@types)
      7 -> pick(Enum.map(@types, &Atom.to_string/1))
      8 -> pick([:tensorr, "", "FLOAT", nil, 1, <<255>>, :"", {:float}])
    end
  end

  defp register_opts(ctx) do
    case :rand.uniform(6) do
      1 ->
        []

      2 ->
        [constraints: map_of(ctx, 3)]

      3 ->
        [
          constraints:
            pick([
              %{min: 0, max: 1},
              %{choices: term(ctx, 2)},
              %{shape: shape()},
              %{pattern: pick(["(a+)+$", "[", "\\", ctx.big.long])},
              %{dimensions: pick([2, -1, 1 <<< 64, 1.5])}
            ])
        ]

      4 ->
        [metadata: metadata(ctx)]

      5 ->
        [description: pick(["d", :d, 1, ctx.big.long])]

      6 ->
        [constraints: pick([ctx.big.deep_map, ctx.big.big_meta, %{min: 1 <<< 1000}])]
    end
  end

  defp metadata(ctx) do
    case :rand.uniform(8) do
      n when n <= 4 -> %{}
      5 -> %{"k" => pick(["v", :v, 1, 1.5, 1 <<< 70, nil, self(), {:t}, <<255>>, ctx.big.long])}
      6 -> map_of(ctx, 2)
      7 -> ctx.big.big_meta
      8 -> pick([nil, [], :meta, %{pick([1, {:k}, <<255>>]) => "v"}])
    end
  end

  # A value for some type, or anything at all.
  defp value(ctx) do
    case :rand.uniform(10) do
      1 -> :rand.uniform() * 2
      2 -> :rand.uniform(100)
      3 -> pick(["a", "b", "x"])
      4 -> pick([true, false])
      5 -> [:rand.uniform(), :rand.uniform()]
      6 -> %{shape: shape(), data: pick([[], [1.0, 2.0], [[1.0], [2.0]], term(ctx, 2)])}
      7 -> big(ctx)
      _ -> term(ctx, 4)
    end
  end

  defp shape do
    pick([
      [2],
      [2, 1],
      [],
      [0],
      [-1],
      [1.5],
      ["2"],
      [1 <<< 40],
      [1 <<< 32, 1 <<< 32],
      [1 <<< 63],
      [1 <<< 64],
      [1 <<< 1000],
      [0, 1 <<< 62],
      Enum.map(1..100, fn _ -> 2 end),
      :shape,
      nil
    ])
  end

  defp big(ctx) do
    pick([
      ctx.big.long,
      ctx.big.long_unicode,
      ctx.big.big_list,
      ctx.big.deep_list,
      ctx.big.deep_map,
      ctx.big.big_meta,
      nest(65, 1, &[&1]),
      nest(64, 1, &[&1]),
      nest(66, 1, &%{a: &1}),
      %{shape: [200_000], data: ctx.big.big_list},
      %{shape: [1 <<< 40], data: ctx.big.big_list}
    ])
  end

  # Any term: nested lists and maps, atoms, extreme numbers, invalid UTF-8,
  # tuples, pids, references, functions, improper lists, structs.
  defp term(_ctx, 0), do: leaf()

  defp term(ctx, depth) do
    case :rand.uniform(12) do
      n when n <= 5 -> leaf()
      6 -> for _ <- 1..:rand.uniform(5)//1, do: term(ctx, depth - 1)
      7 -> map_of(ctx, depth - 1)
      8 -> List.to_tuple(for _ <- 1..:rand.uniform(3)//1, do: term(ctx, depth - 1))
      9 -> [term(ctx, depth - 1) | leaf()]
      10 -> %{shape: shape(), data: term(ctx, depth - 1)}
      11 -> pick([%URI{}, DateTime.utc_now(), 1..3, MapSet.new([1])])
      12 -> hostile_text(ctx)
    end
  end

  defp map_of(ctx, depth) do
    Map.new(1..:rand.uniform(4)//1, fn _ ->
      {pick([:a, :b, "c", "d", 1, 1.5, {:k}, <<255>>, nil, :__struct__, "__struct__"]),
       term(ctx, max(depth, 0))}
    end)
  end

  defp leaf do
    pick([
      nil,
      true,
      false,
      :atom,
      :infinity,
      :negative_infinity,
      :nan,
      :"ünïcode atom",
      0,
      -1,
      1 <<< 31,
      (1 <<< 53) + 1,
      (1 <<< 63) - 1,
      1 <<< 63,
      (1 <<< 64) - 1,
      1 <<< 64,
      -(1 <<< 63),
      -(1 <<< 63) - 1,
      1 <<< 1000,
      -(1 <<< 1000),
      :rand.uniform(1 <<< 70) - (1 <<< 69),
      0.0,
      -0.0,
      1.5,
      1.0e308,
      -1.0e308,
      5.0e-324,
      :rand.normal() * 1.0e10,
      "",
      "text",
      "é",
      <<255, 254>>,
      <<0xC0, 0x80>>,
      <<0xED, 0xA0, 0x80>>,
      <<0>>,
      :rand.bytes(:rand.uniform(16)),
      self(),
      make_ref(),
      fn -> :ok end,
      {},
      {:a, 1},
      [],
      ~c"charlist"
    ])
  end

  defp hostile_text(ctx) do
    pick([
      <<255, 254>>,
      "a\0b",
      "line\nbreak",
      String.duplicate("é", 200),
      String.duplicate("x", 257),
      String.duplicate("x", 70_000),
      ctx.big.long,
      "*",
      "var_f_1"
    ])
  end

  defp nest(0, inner, _wrap), do: inner
  defp nest(n, inner, wrap), do: nest(n - 1, wrap.(inner), wrap)

  # Failure messages stay readable however big the terms were.
  defp describe(term), do: inspect(term, limit: 8, printable_limit: 80, structs: false)
end
