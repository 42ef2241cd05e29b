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


def _http(http: dict[str, Any]) -> list[str]:
    s = http["summary"]
    lines = [
        "## End to end: Streamable HTTP on loopback",
        "",
        f"Load from a second process, {http['concurrency']} keep-alive connections; "
        f"{http['sessions']} sessions (initialize, notifications/initialized, tools/call echo, "
        f"DELETE) and {http['calls']} tools/call per run, {http['reps']} runs alternating; memory: "
        f"RSS delta of {http['idle_sessions']} idle sessions in a fresh server.",
        "",
        "| metric | ours (`supervisor.mcp.serve_http`) | SDK `StreamableHTTPSessionManager` | "
        "ratio |",
        "|---|---|---|---|",
        f"| sessions/s | {s['sessions_per_s']['ours']:.0f} | {s['sessions_per_s']['sdk']:.0f} | "
        f"{s['sessions_per_s']['ratio']:.2f}x |",
        f"| calls/s | {s['calls_per_s']['ours']:.0f} | {s['calls_per_s']['sdk']:.0f} | "
        f"{s['calls_per_s']['ratio']:.2f}x |",
        f"| memory per idle session | {s['memory_per_idle_session']['ours'] / 1024:.1f} KB | "
        f"{s['memory_per_idle_session']['sdk'] / 1024:.1f} KB | "
        f"{s['memory_per_idle_session']['ratio']:.2f}x |",
        "",
    ]
    if any(http["errors"].values()):
        lines += [f"Errors seen: `{http['errors']}`", ""]
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
        lines += ["## Targets", "", "| target | value | |", "|---|---|---|"]
    for check in results["targets"]:
        value = check["value"]
        if "lateness" in check["target"]:
            shown = f"{value * 1000:.2f} ms"
        elif "early" in check["target"]:
            shown = f"{int(value)} early"
        else:
            shown = f"{value:.2f}x"
        lines.append(f"| {check['target']} | {shown} | {'met' if check['met'] else '**missed**'} |")
    if results["targets"]:
        lines.append("")
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
    return "\n".join(lines) + "\n"
