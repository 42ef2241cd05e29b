"""PNG plots of ``results.json`` (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .report import HANDLE_OPS, ORDER

OURS, BARE, SEED, SDK = "#1f77b4", "#7f7f7f", "#d62728", "#ff7f0e"


def _core_ratios(core: dict[str, Any], targets: dict[str, float], path: Path) -> None:
    sizes = list(core["sizes"])
    ops = [op for op in ORDER if op in core["sizes"][sizes[0]]["summary"]]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(sizes)
    for i, n in enumerate(sizes):
        ratios = [core["sizes"][n]["summary"][op]["ratio"] for op in ops]
        xs = [j + (i - (len(sizes) - 1) / 2) * width for j in range(len(ops))]
        ax.bar(xs, ratios, width, label=f"{int(n):,} sessions", alpha=0.85)
    for j, op in enumerate(ops):
        if op in targets:
            ax.hlines(targets[op], j - 0.45, j + 0.45, colors="k", linestyles="--", lw=1)
    ax.axhline(1.0, color=BARE, lw=0.8)
    ax.set_xticks(range(len(ops)), ops, rotation=20)
    ax.set_ylabel("ours / bare trio floor")
    ax.set_title("Core cost relative to the bare trio floor (dashed: target)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _core_absolute(core: dict[str, Any], path: Path) -> None:
    sizes = list(core["sizes"])
    ops = [op for op in ORDER if op in core["sizes"][sizes[0]]["summary"]]
    ns = [int(n) for n in sizes]
    cols = 3
    rows = (len(ops) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(11, 3 * rows), squeeze=False)
    for ax, op in zip(axes.flat, ops, strict=False):
        memory = op.startswith("memory")
        scale = 1024 if memory else 1000
        for kind, color in (("ours", OURS), ("bare", BARE)):
            ys = [core["sizes"][n]["summary"][op][kind] / scale for n in sizes]
            ax.plot(ns, ys, "o-", color=color, label=kind)
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_title(op)
        ax.set_ylabel("KB per session" if memory else "µs per op")
        ax.set_xlabel("live sessions")
    for ax in list(axes.flat)[len(ops) :]:
        ax.axis("off")
    axes.flat[0].legend()
    fig.suptitle("Per-operation cost vs live sessions (cost growth)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fanout(fan: dict[str, Any], path: Path) -> None:
    keys = list(fan["summary"])
    ks = [int(k.removeprefix("fanout_k")) for k in keys]
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, color in (("ours", OURS), ("bare", BARE)):
        ax.plot(ks, [fan["summary"][k][kind] / 1000 for k in keys], "o-", color=color, label=kind)
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("subscribers K")
    ax.set_ylabel("µs per event per subscriber")
    ax.set_title("Event fan-out")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _expiry(exp: dict[str, Any], seed: dict[str, Any] | None, path: Path) -> None:
    panels = 2 if seed else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0][0]
    for kind, color, label in (("ours", OURS, "supervisor"), ("bare", BARE, "bare CancelScope")):
        xs = [x * 1000 for x in exp["samples"][kind]]
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.plot(xs, ys, color=color, label=label)
    limit = (exp["deadline_slack"] + 0.005) * 1000
    ax.axvline(limit, color="k", ls="--", lw=1, label=f"target p99 <= {limit:.0f} ms")
    ax.axvline(0, color=SEED, lw=0.8)
    ax.set_xlabel("actual expiry - deadline (ms)")
    ax.set_ylabel("fraction of sessions")
    ax.set_title(f"Expiry lateness, {exp['n']:,} sessions")
    ax.legend(loc="lower right")
    if seed:
        e = seed["expiry"]
        scale = e["default_interval_ms"] / e["interval_ms"]
        ax2 = axes[0][1]
        xs = [x * scale / 1000 for x in e["samples_ms"]]
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax2.plot(xs, ys, color=SEED, label="seed (60 s sweep, scaled)")
        ax2.axvline(limit / 1000, color=OURS, lw=2, label="supervisor p99 bound")
        ax2.set_xlabel("actual expiry - deadline (s)")
        ax2.set_title("The seed's timer sweep")
        ax2.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _seed(seed: dict[str, Any], core: dict[str, Any] | None, path: Path) -> None:
    pairs = [("create", "create"), ("lookup", "lookup"), ("activity", "touch"), ("close", "close")]
    size = seed["sizes"][-1]
    n = str(size["n"])
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(pairs))
    ax.bar(
        [x - 0.2 for x in xs],
        [size["summary"][s] / 1000 for s, _ in pairs],
        0.4,
        color=SEED,
        label="seed (Node)",
    )
    if core and n in core["sizes"]:
        ax.bar(
            [x + 0.2 for x in xs],
            [core["sizes"][n]["summary"][o]["ours"] / 1000 for _, o in pairs],
            0.4,
            color=OURS,
            label="ours (trio)",
        )
    ax.set_yscale("log")
    ax.set_xticks(list(xs), [s if s == o else f"{s}/{o}" for s, o in pairs])
    ax.set_ylabel("µs per operation (log)")
    ax.set_title(f"Seed vs supervisor at {int(n):,} live sessions")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_SUBJECT_COLORS = {
    "ours": OURS,
    "handle": OURS,
    "no_handle": "#6baed6",
    "sdk": SDK,
    "sdk_stateless": "#fdae6b",
    "ceiling": BARE,
}
_SUBJECT_LABELS = {
    "ours": "ours",
    "handle": "ours,\nhandle",
    "no_handle": "ours,\nno hdl",
    "sdk": "SDK",
    "sdk_stateless": "SDK\nstateless",
    "ceiling": "ceiling",
}
_GROUP_LABELS = {
    "handshake_sse": "handshake SSE",
    "handshake_json": "handshake JSON",
    "modern_sse": "2026-07-28 SSE",
    "modern_json": "2026-07-28 JSON",
}


def _http(http: dict[str, Any], path: Path) -> None:
    s = http["summary"]
    panels = [(g, m) for g in _GROUP_LABELS for m in s[g]]
    fig, axes = plt.subplots(2, 4, figsize=(15, 7.5))
    flat = list(axes.flat)
    for ax, (group, metric) in zip(flat, panels, strict=False):
        medians = s[group][metric]["median"]
        names = list(medians)
        xs = range(len(names))
        ax.bar(xs, [medians[n] for n in names], color=[_SUBJECT_COLORS[n] for n in names])
        for x, n in zip(xs, names, strict=True):
            runs = http["raw"][group][metric][n]
            ax.plot([x] * len(runs), runs, "k.", ms=4)
        ax.set_xticks(list(xs), [_SUBJECT_LABELS[n] for n in names], fontsize=7)
        ax.set_title(f"{_GROUP_LABELS[group]}: {metric.replace('_per_s', '/s')}", fontsize=10)
    mem = s.get("memory_per_idle_session", {})
    ax = flat[len(panels)]
    if mem:
        groups = list(mem)
        for i, group in enumerate(groups):
            ax.bar(i - 0.2, mem[group]["median"]["ours"] / 1024, 0.4, color=OURS)
            ax.bar(i + 0.2, mem[group]["median"]["sdk"] / 1024, 0.4, color=SDK)
        ax.set_xticks(range(len(groups)), [_GROUP_LABELS[g] for g in groups], fontsize=8)
        ax.set_ylabel("KB per idle session")
        ax.set_title("memory (blue ours, orange SDK)", fontsize=10)
    else:
        ax.axis("off")
    ax = flat[len(panels) + 1]
    profiles = http.get("profiles") or {}
    if profiles:
        layers: list[str] = []
        for p in profiles.values():
            layers += [layer for layer in p["layers"] if layer not in layers]
        names = list(profiles)
        left = [0.0] * len(names)
        cmap = plt.get_cmap("tab20")
        for j, layer in enumerate(layers):
            widths = [profiles[n]["layers"].get(layer, 0.0) for n in names]
            ax.barh(range(len(names)), widths, left=left, color=cmap(j % 20), label=layer)
            left = [a + b for a, b in zip(left, widths, strict=True)]
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        profiler = next(iter(profiles.values())).get("profiler", "cProfile")
        ax.set_title(f"busy time by layer ({profiler})", fontsize=10)
        ax.legend(fontsize=6, loc="lower left", bbox_to_anchor=(1.0, 0.0))
    else:
        ax.axis("off")
    for ax in flat[len(panels) + 2 :]:
        ax.axis("off")
    fig.suptitle("Streamable HTTP on loopback (bars: median; dots: runs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _handles(h: dict[str, Any], path: Path) -> None:
    sizes = list(h["sizes"])
    ops = [op for op in HANDLE_OPS if op in h["sizes"][sizes[0]]["summary"]]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(sizes)
    for i, n in enumerate(sizes):
        ratios = [h["sizes"][n]["summary"][op]["ratio"] for op in ops]
        xs = [j + (i - (len(sizes) - 1) / 2) * width for j in range(len(ops))]
        ax.bar(xs, ratios, width, label=f"{int(n):,} live handles", alpha=0.85)
    ax.axhline(1.0, color=BARE, lw=0.8)
    ax.set_xticks(range(len(ops)), ops, rotation=20)
    ax.set_ylabel("handle / plain core session")
    ax.set_title("State handles relative to a plain core session (same process)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_all(results: dict[str, Any], out: Path) -> list[Path]:
    """Write every plot the results allow; returns the paths written."""
    from .run import CORE_TARGETS

    written: list[Path] = []
    core = results.get("core")
    if core:
        _core_ratios(core, CORE_TARGETS, out / "core_ratios.png")
        _core_absolute(core, out / "core_growth.png")
        written += [out / "core_ratios.png", out / "core_growth.png"]
        if core.get("fanout"):
            _fanout(core["fanout"], out / "fanout.png")
            written.append(out / "fanout.png")
    if results.get("expiry"):
        _expiry(results["expiry"], results.get("seed"), out / "expiry.png")
        written.append(out / "expiry.png")
    if results.get("seed"):
        _seed(results["seed"], core, out / "seed.png")
        written.append(out / "seed.png")
    if results.get("handles"):
        _handles(results["handles"], out / "handles.png")
        written.append(out / "handles.png")
    if results.get("http"):
        _http(results["http"], out / "http.png")
        written.append(out / "http.png")
    return written
