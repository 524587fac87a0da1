"""`--chart PATH.png` of scripts/bench.py: this run's no-op job throughput and submit → start
latency at the paced rate, Ferry (each configuration measured) next to each peer. Needs
matplotlib (scripts/bench-requirements.txt), drawn with the Agg backend (no display); bench.py
imports this module only when asked for a chart, so that the benchmark itself runs with the
standard library alone.
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

import bench_goals  # noqa: E402

FERRY_COLOR, PEER_COLOR = "#1f6fb4", "#9a9a9a"
P50_COLOR, P99_COLOR = "#2b8cbe", "#e34a33"
BAR_HEIGHT = 0.38


def throughputs(results: bench_goals.Results) -> list[tuple[str, float | None]]:
    """(system, jobs/s or None when not measured): Ferry's configurations, then the peers."""
    ferry = [(f"Ferry {c}", None if isinstance(m.jobs, str) else m.jobs.throughput)
             for c, m in results.configs.items()]
    peers = [] if isinstance(results.peers, str) else [
        (r.name, r.throughput) for r in results.peers]
    return ferry + peers


def latencies(results: bench_goals.Results) -> list[tuple[str, float | None, float | None]]:
    """(system, p50 ms, p99 ms) of submit → start at the paced rate; None when not measured."""
    ferry = [(f"Ferry {c}", *((None, None) if isinstance(m.paced, str)
                              else (m.paced.dispatch_p50, m.paced.dispatch_p99)))
             for c, m in results.configs.items()]
    peers = [] if isinstance(results.peers, str) else [
        (r.name, r.dispatch_p50, r.dispatch_p99) for r in results.peers]
    return ferry + peers


def throughput_panel(ax: plt.Axes, rows: list[tuple[str, float | None]]) -> None:
    names = [name for name, _ in rows]
    values = [v or 0 for _, v in rows]
    colors = [FERRY_COLOR if name.startswith("Ferry") else PEER_COLOR for name in names]
    ax.barh(range(len(rows)), values, color=colors)
    for y, (_, v) in enumerate(rows):
        ax.annotate(f"{v:,.0f}" if v is not None else "not measured", (v or 0, y),
                    xytext=(4, 0), textcoords="offset points", va="center", fontsize=9)
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()  # the first system on top
    ax.set_xlabel("jobs/s (higher is better)")
    ax.set_title("No-op job throughput")
    ax.set_xlim(0, max(values, default=0) * 1.2 or 1)


def latency_panel(ax: plt.Axes, rows: list[tuple[str, float | None, float | None]],
                  pace: float) -> None:
    measured = [v for _, *vs in rows for v in vs if v]
    goals = ((bench_goals.DISPATCH_P50_MS, ":", "p50"), (bench_goals.DISPATCH_P99_MS, "--", "p99"))
    if measured and max(measured) / min(measured) > 20:  # a log scale shows both ends
        ax.set_xscale("log")
        ax.set_xlim(min(measured + [1.0]) / 2, max(measured) * 4)
    else:
        ax.set_xlim(0, max(measured + [bench_goals.DISPATCH_P99_MS]) * 1.25)
    left = ax.get_xlim()[0]
    for offset, index, color in ((-BAR_HEIGHT / 2, 1, P50_COLOR), (BAR_HEIGHT / 2, 2, P99_COLOR)):
        ys = [y + offset for y in range(len(rows))]
        values = [row[index] for row in rows]
        ax.barh(ys, [v or 0 for v in values], height=BAR_HEIGHT, color=color,
                label=goals[index - 1][2])
        for y, v in zip(ys, values):
            ax.annotate(f"{v:.1f}" if v is not None else "not measured", (v or left, y),
                        xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    for bar, style, name in goals:
        ax.axvline(bar, color="black", linestyle=style, linewidth=1,
                   label=f"goal: {name} ≤ {bar:g} ms")
    ax.set_yticks(range(len(rows)), [name for name, *_ in rows])
    ax.invert_yaxis()
    ax.set_xlabel("ms (lower is better)" + (", log scale" if ax.get_xscale() == "log" else "")
                  + "\nFerry: through its HTTP API, from its own timestamps (created_at → "
                  "started_at);\nthe peers: through their client APIs in-process, from the "
                  "client's submit to the handler's start")
    ax.set_title(f"Submit → handler start at {pace:g} jobs/s, p50 and p99")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # beside the bars


def measured_any(results: bench_goals.Results) -> bool:
    """Whether the run measured anything this chart shows."""
    return any(v is not None for _, v in throughputs(results)) or any(
        v is not None for _, *vs in latencies(results) for v in vs)


def write_chart(results: bench_goals.Results, path: str, title: str) -> None:
    """The two panels, one above the other, as a PNG at `path`."""
    rows = throughputs(results)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 3 + 0.9 * len(rows)),
                                      layout="constrained")
    throughput_panel(top, rows)
    latency_panel(bottom, latencies(results), results.pace)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=120)
    plt.close(fig)
