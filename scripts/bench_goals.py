"""Issue 10's goals, measured: scripts/bench.py records the figures its sections measured in a
`Results`, and `goals_table(results)` renders them as one Markdown table, a row per goal: the
target, Ferry's figure per configuration, what it is compared with in the same run (a peer, nginx,
or a limit of the machine), Ferry's ratio to that, and whether the target is met. Where a section
did not measure, the cells say why (e.g. "skipped (--skip-polls)"). Standard library only.
"""

import dataclasses
from typing import Callable

import bench_peers

NOT_MEASURED = "not measured"  # the section failed, or the run stopped before it
CONFIGS = ("SQLite", "PostgreSQL+S3")  # the embedded configuration, the scale-out one

# The targets of issue 10.
POLL_RPS, POLL_P99_MS = 30_000, 5.0  # GET /v1/jobs/{id}, wrk with 32 connections
DISPATCH_P50_MS, DISPATCH_P99_MS = 2.0, 6.0  # submit → handler start, below saturation
ONE_UPLOAD_SHARE = 0.8  # of the lowest limit one upload goes through
FOUR_UPLOADS_SHARE = 0.9  # of dd with fsync


@dataclasses.dataclass
class UploadFigures:
    """MB/s (10^6 bytes per second)."""
    dd: float  # dd with conv=fsync in the temporary folder
    sha256: float
    loopback: float
    to_disk: bool  # the uploads are stored on the local disk (not S3)
    one: float  # one streamed upload
    four: float  # four at once, aggregate

    def limits(self) -> dict[str, float]:
        """What one upload's bytes go through: loopback, SHA-256, and the disk if stored there."""
        disk = {"dd": self.dd} if self.to_disk else {}
        return {**disk, "SHA-256": self.sha256, "loopback": self.loopback}

    def limit(self) -> float:
        """What one upload cannot beat."""
        return min(self.limits().values())


@dataclasses.dataclass
class JobFigures:
    """No-op jobs through the HTTP API, from the server's timestamps."""
    throughput: float  # jobs/s, first created_at → last finished_at
    dispatch_p50: float  # ms, started_at - created_at
    dispatch_p99: float
    cpu_ms_per_job: float  # the server's CPU (user + system) from the first POST to the last poll


@dataclasses.dataclass
class PollFigures:
    """wrk medians (`rps`, `p50` and `p99` in ms) of status polls on a server without keys."""
    plain: dict[str, float]  # GET /v1/jobs/{id} → 200
    conditional: dict[str, float]  # the same with If-None-Match → 304
    nginx: dict[str, float]  # a static file of the same size


@dataclasses.dataclass
class Measured:
    """One configuration's figures; where a section did not measure them, why."""
    uploads: UploadFigures | str = NOT_MEASURED
    jobs: JobFigures | str = NOT_MEASURED  # submitted as fast as the clients can
    paced: JobFigures | str = NOT_MEASURED  # submitted at an even pace
    polls: PollFigures | str = NOT_MEASURED


@dataclasses.dataclass
class Results:
    """What the run measured, for the goals table and the chart."""
    pace: float  # jobs/s of the paced runs
    upload_gib: float
    configs: dict[str, Measured] = dataclasses.field(default_factory=dict)  # CONFIGS → figures
    peers: list[bench_peers.Row] | str = NOT_MEASURED


Compared = list[tuple[str, float]] | str  # (what, figure): the first gives the ratio; or why none


@dataclasses.dataclass
class Check:
    """One goal on one configuration."""
    ferry: float | str  # Ferry's figure, or why there is none
    compared: Compared  # what it is compared with in this run
    bar: float | None  # the figure the target asks for; None when unknown


@dataclasses.dataclass
class Goal:
    what: str
    target: str
    unit: str
    at_most: bool  # lower is better (a latency)
    checks: dict[str, Check]  # configuration → its check


def goal(results: Results, what: str, target: str, unit: str, at_most: bool,
         check: Callable[[Measured], Check]) -> Goal:
    """A goal, checked at once on every configuration measured."""
    return Goal(what, target, unit, at_most, {c: check(m) for c, m in results.configs.items()})


def poll_goals(results: Results) -> list[Goal]:
    """Requests/s and p99 of plain and conditional status polls; nginx is the comparison."""
    def check(polls: PollFigures | str, which: str, figure: str, bar: float) -> Check:
        if isinstance(polls, str):
            return Check(polls, polls, None)
        return Check(getattr(polls, which)[figure], [("nginx static file", polls.nginx[figure])],
                     bar)

    goals = []
    for which, what in (("plain", "status poll `GET /v1/jobs/{id}`"),
                        ("conditional", "the same with `If-None-Match` → 304")):
        goals += [
            goal(results, f"{what}, req/s", f"≥ {POLL_RPS:,} req/s", "req/s", False,
                 lambda m: check(m.polls, which, "rps", POLL_RPS)),
            goal(results, f"{what}, p99", f"≤ {POLL_P99_MS:g} ms", "ms", True,
                 lambda m: check(m.polls, which, "p99", POLL_P99_MS)),
        ]
    return goals


def bullmq(peers: list[bench_peers.Row] | str) -> tuple[Compared, float | None]:
    """BullMQ's throughput with AOF `everysec` (the bar) and, if measured, `always`."""
    if isinstance(peers, str):
        return peers, None
    rows = {r.name: r for r in peers}
    everysec, always = (rows.get(bench_peers.bullmq_name(f)) for f in ("everysec", "always"))
    if everysec is None or everysec.throughput is None:
        return f"{bench_peers.bullmq_name('everysec')}: not measured (see the peers)", None
    compared = [(everysec.name, everysec.throughput)]
    if always is not None and always.throughput is not None:
        compared.append((always.name, always.throughput))
    return compared, everysec.throughput


def throughput_goal(results: Results) -> Goal:
    compared, bar = bullmq(results.peers)
    return goal(results, "no-op jobs through the HTTP API, jobs/s", "≥ BullMQ, AOF everysec",
                "jobs/s", False, lambda m: Check(
                    m.jobs if isinstance(m.jobs, str) else m.jobs.throughput, compared, bar))


def best_peer(peers: list[bench_peers.Row] | str, figure: str) -> Compared:
    """The peer with the lowest `figure` (a Row attribute)."""
    if isinstance(peers, str):
        return peers
    measured = [(getattr(r, figure), r.name) for r in peers if getattr(r, figure) is not None]
    if not measured:
        return "no peer measured"
    value, name = min(measured)
    return [(f"best peer: {name}", value)]


def dispatch_goals(results: Results) -> list[Goal]:
    """Submit → start at the paced rate, p50 and p99; the best peer at each is the comparison."""
    goals = []
    for name, bar in (("p50", DISPATCH_P50_MS), ("p99", DISPATCH_P99_MS)):
        figure = f"dispatch_{name}"
        compared = best_peer(results.peers, figure)
        goals.append(goal(
            results, f"dispatch submit → start at {results.pace:g} jobs/s, {name}",
            f"≤ {bar:g} ms", "ms", True, lambda m: Check(
                m.paced if isinstance(m.paced, str) else getattr(m.paced, figure),
                compared, bar)))
    return goals


def upload_goals(results: Results) -> list[Goal]:
    """One upload against the lowest limit it goes through; four at once against dd."""
    def one(m: Measured) -> Check:
        if isinstance(u := m.uploads, str):
            return Check(u, u, None)
        limits = ", ".join(f"{k} {num(v)}" for k, v in u.limits().items())
        return Check(u.one, [(f"min({limits}) =", u.limit())], ONE_UPLOAD_SHARE * u.limit())

    def four(m: Measured) -> Check:
        if isinstance(u := m.uploads, str):
            return Check(u, u, None)
        if not u.to_disk:  # on S3 the bytes never reach this disk: dd is no bar for them
            return Check(u.four, "no bar: stored on S3, not on this disk", None)
        return Check(u.four, [("dd with fsync", u.dd)], FOUR_UPLOADS_SHARE * u.dd)

    gib = f"{results.upload_gib:g} GiB"
    return [
        goal(results, f"one streamed upload of {gib}, MB/s",
             f"≥ {ONE_UPLOAD_SHARE:.0%} of min(dd, SHA-256, loopback)", "MB/s", False, one),
        goal(results, f"four uploads of {gib} at once, aggregate MB/s",
             f"≥ {FOUR_UPLOADS_SHARE:.0%} of dd", "MB/s", False, four),
    ]


def num(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def ferry_cell(g: Goal, check: Check) -> str:
    return check.ferry if isinstance(check.ferry, str) else f"{num(check.ferry)} {g.unit}"


def compared_cell(g: Goal, check: Check) -> str:
    if isinstance(check.compared, str):
        return check.compared
    return "; ".join(f"{what} {num(v)} {g.unit}" for what, v in check.compared)


def ratio_cell(_: Goal, check: Check) -> str:
    if isinstance(check.ferry, str) or isinstance(check.compared, str):
        return "—"
    (_, first), *others = check.compared
    return f"{check.ferry / first:.2f}" + "".join(
        f" ({check.ferry / v:.2f} vs {what})" for what, v in others)


def met_cell(g: Goal, check: Check) -> str:
    if isinstance(check.ferry, str) or check.bar is None:
        return "—"
    return "yes" if (check.ferry <= check.bar if g.at_most else check.ferry >= check.bar) else "no"


def per_config(g: Goal, cell: Callable[[Goal, Check], str]) -> str:
    """One cell for every configuration: the text, or each configuration's when they differ."""
    texts = {config: cell(g, check) for config, check in g.checks.items()}
    if len(set(texts.values())) == 1:
        return next(iter(texts.values()))
    return "; ".join(f"{config}: {text}" for config, text in texts.items())


def goals_table(results: Results) -> str:
    """The Markdown table, then what it leaves out."""
    goals = [*poll_goals(results), throughput_goal(results), *dispatch_goals(results),
             *upload_goals(results)]
    header = ["goal", "target", *(f"Ferry {c}" for c in results.configs),
              "peer / limit in this run", "ratio", "met?"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for g in goals:
        cells = [g.what, g.target, *(ferry_cell(g, check) for check in g.checks.values()),
                 per_config(g, compared_cell), per_config(g, ratio_cell), per_config(g, met_cell)]
        lines.append("| " + " | ".join(cells) + " |")
    if missing := [c for c in CONFIGS if c not in results.configs]:
        lines.append(f"\nFerry {', '.join(missing)}: not measured (needs --postgres and "
                     "--s3-endpoint).")
    lines.append("\nratio: Ferry's figure / the first figure it is compared with (for a "
                 "latency, above 1 is slower). Ferry's dispatch is from its own timestamps, the "
                 "peers' from the client's submit to the handler's first line.")
    return "\n".join(lines)
