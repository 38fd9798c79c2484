"""Aggregating samples into medians and same-round ratios; the markdown, JSON and chart."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.workloads import WORKLOADS, Sample

# The markdown's multiplication sign (ratios) and en dash (ranges, missing values).
X = "\N{MULTIPLICATION SIGN}"
DASH = "\N{EN DASH}"

REFERENCE = "nginx"  # every ratio is to nginx with its access log on, measured in the same round


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    pairs: tuple[tuple[str, str], ...]  # (base, variant): the ratio is variant / base
    workloads: tuple[str, ...]


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            "uds-vs-tcp",
            "upstream over TCP loopback vs over a Unix socket",
            (("udsproxy-nolog", "udsproxy-tcp"), ("nginx-nolog", "nginx-tcp")),
            ("small", "c1", "get100k"),
        ),
        Experiment(
            "shm-vs-disk",
            "socket file on disk (/var/tmp) vs in /dev/shm (tmpfs)",
            (("udsproxy-nolog", "udsproxy-disk"), ("nginx-nolog", "nginx-disk")),
            ("small", "c1"),
        ),
        Experiment(
            "pool",
            "a new upstream connection per request vs the keep-alive pool",
            (("udsproxy-nolog", "udsproxy-nopool"), ("nginx-nolog", "nginx-nopool")),
            ("small", "c1"),
        ),
        Experiment(
            "splice",
            "splice(2) vs the memoryview relay (--splice-min-bytes 0; --splice-responses)",
            (
                ("udsproxy-splice0", "udsproxy-nolog"),
                ("udsproxy-splice0", "udsproxy-splice64k"),
                ("udsproxy-nolog", "udsproxy-splice-resp"),
            ),
            ("get100k", "get1m", "post16k", "post1m"),
        ),
        Experiment(
            "stats",
            "per-request stats off (--disable-request-stats) vs on: what counting costs",
            (("udsproxy-nolog", "udsproxy-nostats"),),
            ("small", "browser"),
        ),
    )
}


# --- statistics ------------------------------------------------------------------------------


@dataclass
class Stat:
    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat | None:
        vs = [v for v in values if v is not None]
        if not vs:
            return None
        return cls(statistics.median(vs), min(vs), max(vs), len(vs))

    def to_json(self) -> dict[str, float]:
        return {"median": self.median, "min": self.lo, "max": self.hi, "n": self.n}


@dataclass
class Cell:
    """One (workload, subject) over all rounds."""

    workload: str
    subject: str
    rps: Stat | None = None
    p50: Stat | None = None
    p99: Stat | None = None
    cpu: Stat | None = None
    sys_cpu: Stat | None = None  # the kernel's part of cpu (stime)
    upstream_cpu: Stat | None = None
    rss_peak: float | None = None
    rss_idle: Stat | None = None
    kib_per_conn: Stat | None = None
    ratio_rps: Stat | None = None
    ratio_p50: Stat | None = None
    ratio_p99: Stat | None = None
    ratio_cpu: Stat | None = None
    ratio_rss: Stat | None = None
    errors: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    rounds: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"workload": self.workload, "subject": self.subject}
        for key, value in self.__dict__.items():
            if isinstance(value, Stat):
                out[key] = value.to_json()
            elif key not in out:
                out[key] = value
        return out


def _by_round(samples: Sequence[Sample], workload: str, subject: str) -> dict[int, Sample]:
    return {s.round: s for s in samples if s.workload == workload and s.subject == subject and s.ok}


def ratios(
    samples: Sequence[Sample],
    workload: str,
    subject: str,
    base: str,
    metric: Callable[[Sample], float | None],
) -> Stat | None:
    """variant / base for each round where both ran: the median with min-max."""
    a, b = _by_round(samples, workload, base), _by_round(samples, workload, subject)
    out = []
    for rnd in sorted(set(a) & set(b)):
        va, vb = metric(a[rnd]), metric(b[rnd])
        if va and vb is not None:
            out.append(vb / va)
    return Stat.of(out)


def aggregate(samples: Sequence[Sample], workload: str, subject: str) -> Cell:
    mine = [s for s in samples if s.workload == workload and s.subject == subject]
    ok = [s for s in mine if s.ok]
    c = Cell(workload, subject, rounds=len(ok))
    c.failures = [f"round {s.round}: {s.failure}" for s in mine if not s.ok]
    for s in mine:
        for k, v in s.errors.items():
            c.errors[k] = c.errors.get(k, 0) + v
    if not ok:
        return c
    if WORKLOADS[workload].idle:
        c.rss_idle = Stat.of(s.rss_idle_mib for s in ok)
        c.kib_per_conn = Stat.of(s.kib_per_conn for s in ok)
        c.p50 = Stat.of(s.p50_ms for s in ok)
        c.p99 = Stat.of(s.p99_ms for s in ok)
        c.ratio_rss = ratios(samples, workload, subject, REFERENCE, lambda s: s.rss_idle_mib)
    else:
        c.rps = Stat.of(s.rps for s in ok)
        c.p50 = Stat.of(s.p50_ms for s in ok)
        c.p99 = Stat.of(s.p99_ms for s in ok)
        c.cpu = Stat.of(s.cpu_us_per_req for s in ok)
        c.sys_cpu = Stat.of(s.sys_us_per_req for s in ok)
        c.upstream_cpu = Stat.of(s.upstream_cpu_us_per_req for s in ok)
        c.ratio_rps = ratios(samples, workload, subject, REFERENCE, lambda s: s.rps)
        c.ratio_p50 = ratios(samples, workload, subject, REFERENCE, lambda s: s.p50_ms)
        c.ratio_p99 = ratios(samples, workload, subject, REFERENCE, lambda s: s.p99_ms)
        c.ratio_cpu = ratios(samples, workload, subject, REFERENCE, lambda s: s.cpu_us_per_req)
    peaks = [s.rss_peak_mib for s in ok if s.rss_peak_mib is not None]
    c.rss_peak = max(peaks) if peaks else None
    return c


# --- formatting ------------------------------------------------------------------------------


def _num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return DASH
    if digits == 0:
        return f"{v:,.0f}".replace(",", " ")
    return f"{v:.{digits}f}"


def _rng(s: Stat | None, digits: int = 0) -> str:
    if s is None:
        return DASH
    if s.n == 1:
        return _num(s.median, digits)
    return f"{_num(s.median, digits)} [{_num(s.lo, digits)}{DASH}{_num(s.hi, digits)}]"


def _ratio(s: Stat | None, ranged: bool = False) -> str:
    if s is None:
        return DASH
    if ranged and s.n > 1:
        return f"{s.median:.2f}{X} [{s.lo:.2f}{DASH}{s.hi:.2f}]"
    return f"{s.median:.2f}{X}"


def _errors(c: Cell) -> str:
    parts = [f"{k} {v}" for k, v in sorted(c.errors.items())]
    if c.failures:
        parts.append(f"{len(c.failures)} failed")
    return ", ".join(parts) if parts else "0"


def _ms(v: float | None) -> str:
    if v is None:
        return DASH
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 10 else f"{v:.1f}"


def _ms_stat(s: Stat | None) -> str:
    return _ms(s.median if s else None)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


class Report:
    def __init__(
        self,
        samples: Sequence[Sample],
        workloads: Sequence[str],
        main_subjects: Sequence[str],
        labels: dict[str, str],
        experiments: Sequence[str],
        meta: dict[str, Any],
        notes: Sequence[str],
    ) -> None:
        self.samples = samples
        self.workloads = list(workloads)
        self.main = list(main_subjects)
        self.labels = labels
        self.experiments = [EXPERIMENTS[e] for e in experiments]
        self.meta = meta
        self.notes = list(notes)
        self.cells: dict[tuple[str, str], Cell] = {}
        subjects = {s.subject for s in samples}
        for w in self.workloads:
            for subj in subjects:
                if any(s.workload == w and s.subject == subj for s in samples):
                    self.cells[(w, subj)] = aggregate(samples, w, subj)

    def cell(self, workload: str, subject: str) -> Cell | None:
        return self.cells.get((workload, subject))

    def label(self, subject: str) -> str:
        return self.labels.get(subject, subject)

    # --- markdown ----------------------------------------------------------------------------

    def summary_lines(self) -> list[str]:
        """The headline table: every proxy as a ratio to nginx (log on), same round."""
        ws = [w for w in self.workloads if (w, REFERENCE) in self.cells]
        if not ws:
            return []
        header = ["proxy", *[_short(w) for w in ws]]
        rows = []
        for subj in self.main:
            row = [self.label(subj)]
            for w in ws:
                c = self.cell(w, subj)
                if c is None:
                    row.append(DASH)
                elif WORKLOADS[w].idle:
                    row.append(f"{_num(c.rss_idle.median, 1)} MiB" if c.rss_idle else DASH)
                elif WORKLOADS[w].latency:
                    p50, p99 = c.ratio_p50, c.ratio_p99
                    row.append(
                        f"{p50.median:.2f}{X} / {p99.median:.2f}{X}" if p50 and p99 else DASH
                    )
                else:
                    row.append(_ratio(c.ratio_rps))
            rows.append(row)
        return table(header, rows)

    def absolute_lines(self, what: str) -> list[str]:
        ws = [w for w in self.workloads if not WORKLOADS[w].idle]
        header = ["proxy", *[_short(w) for w in ws]]
        rows = []
        for subj in self.main:
            row = [self.label(subj)]
            for w in ws:
                c = self.cell(w, subj)
                if c is None:
                    row.append(DASH)
                elif what == "rps":
                    row.append(_num(c.rps.median) if c.rps else DASH)
                else:
                    row.append(_num(c.cpu.median, 1) if c.cpu else DASH)
            rows.append(row)
        return table(header, rows)

    def workload_lines(self, w: str) -> list[str]:
        wl = WORKLOADS[w]
        subjects = [s for s in self.main if (w, s) in self.cells]
        if wl.idle:
            header = [
                "proxy",
                "RSS idle MiB",
                f"{X} {REFERENCE}",
                "KiB/conn",
                "RSS fresh MiB",
                "first req p50/p99 ms",
                "errors",
            ]
            rows = []
            for subj in subjects:
                c = self.cells[(w, subj)]
                before = Stat.of(
                    s.rss_before_mib
                    for s in self.samples
                    if s.workload == w and s.subject == subj and s.ok
                )
                rows.append(
                    [
                        self.label(subj),
                        _rng(c.rss_idle, 1),
                        _ratio(c.ratio_rss),
                        _rng(c.kib_per_conn, 1),
                        _num(before.median if before else None, 1),
                        f"{_ms_stat(c.p50)} / {_ms_stat(c.p99)}",
                        _errors(c),
                    ]
                )
            return [f"### {wl.title}", "", *table(header, rows)]
        header = [
            "proxy",
            f"req/s median [min{DASH}max]",
            f"{X} {REFERENCE}",
            "p50 ms",
            "p99 ms",
        ]
        if wl.latency:
            header += [f"p50 {X} {REFERENCE}", f"p99 {X} {REFERENCE}"]
        header += [
            "CPU µs/req",
            "of it kernel",
            f"CPU {X} {REFERENCE}",
            "upstream µs/req",
            "peak RSS MiB",
            "errors",
        ]
        rows = []
        for subj in subjects:
            c = self.cells[(w, subj)]
            row = [
                self.label(subj),
                _rng(c.rps),
                _ratio(c.ratio_rps, ranged=True),
                _ms_stat(c.p50),
                _ms_stat(c.p99),
            ]
            if wl.latency:
                row += [_ratio(c.ratio_p50, True), _ratio(c.ratio_p99, True)]
            row += [
                _num(c.cpu.median, 1) if c.cpu else DASH,
                _num(c.sys_cpu.median, 1) if c.sys_cpu else DASH,
                _ratio(c.ratio_cpu),
                _num(c.upstream_cpu.median, 1) if c.upstream_cpu else DASH,
                _num(c.rss_peak, 1),
                _errors(c),
            ]
            rows.append(row)
        return [f"### {wl.title}", "", *table(header, rows)]

    def experiment_rows(self) -> list[dict[str, Any]]:
        out = []
        for e in self.experiments:
            for base, variant in e.pairs:
                for w in e.workloads:
                    if (w, base) not in self.cells or (w, variant) not in self.cells:
                        continue
                    wl = WORKLOADS[w]
                    cb, cv = self.cells[(w, base)], self.cells[(w, variant)]
                    rr = ratios(self.samples, w, variant, base, lambda s: s.rps)
                    rc = ratios(self.samples, w, variant, base, lambda s: s.cpu_us_per_req)
                    r50 = ratios(self.samples, w, variant, base, lambda s: s.p50_ms)
                    r99 = ratios(self.samples, w, variant, base, lambda s: s.p99_ms)
                    out.append(
                        {
                            "experiment": e.name,
                            "title": e.title,
                            "base": base,
                            "variant": variant,
                            "workload": w,
                            "latency": wl.latency,
                            "base_rps": cb.rps,
                            "variant_rps": cv.rps,
                            "ratio_rps": rr,
                            "ratio_cpu": rc,
                            "ratio_p50": r50,
                            "ratio_p99": r99,
                            "errors": {
                                **cb.errors,
                                **{f"variant {k}": v for k, v in cv.errors.items()},
                            },
                        }
                    )
        return out

    def experiment_lines(self) -> list[str]:
        rows = [
            [
                r["title"],
                _short(r["workload"]),
                f"{self.label(r['variant'])} / {self.label(r['base'])}",
                f"{_num(r['variant_rps'].median if r['variant_rps'] else None)} / "
                f"{_num(r['base_rps'].median if r['base_rps'] else None)}",
                _ratio(r["ratio_rps"], ranged=True),
                _ratio(r["ratio_cpu"]),
                f"{_ratio(r['ratio_p50'])} / {_ratio(r['ratio_p99'])}",
            ]
            for r in self.experiment_rows()
        ]
        if not rows:
            return []
        header = [
            "experiment",
            "workload",
            "variant / base",
            "req/s",
            f"req/s ratio [min{DASH}max]",
            "CPU µs/req ratio",
            "p50 / p99 ratio",
        ]
        return table(header, rows)

    def markdown(self) -> str:
        m = self.meta
        opts = m["options"]
        lines = [
            f"# udsproxy benchmarks, {m['started']}",
            "",
            f"- Machine: {m['machine']['cpu']}, {m['machine']['cpus']} CPUs, "
            f"{m['machine']['memory_gib']} GiB, {m['machine']['os']}, "
            f"Linux {m['machine']['kernel']}; udsproxy at {m['machine']['git']}",
            "- Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
            f"- Pinning: {m['pinning']}",
            f"- Runs: {opts['rounds']} interleaved round(s) of {opts['duration']} s per "
            f"workload and proxy after a {opts['warmup']} s warm-up pass; wrk -t1; "
            f"total {m.get('elapsed_s', 0):.0f} s",
        ]
        if m.get("note"):
            lines.append(f"- Note: {m['note']}")
        lines += [
            "",
            f"## Ratios to {self.label(REFERENCE)}, measured in the same round (median of rounds)",
            "",
            "req/s: higher is better. c1: p50 / p99 latency, lower is better. "
            "idle1000: RSS with 1000 idle connections.",
            "",
            *self.summary_lines(),
            "",
            "## req/s (median)",
            "",
            *self.absolute_lines("rps"),
            "",
            "## Proxy CPU µs per request (median; utime+stime of all its processes)",
            "",
            *self.absolute_lines("cpu"),
            "",
            "## Per workload",
            "",
            "CPU µs/req: utime+stime of all the proxy's processes over the run (from "
            "/proc/<pid>/stat), divided by the requests wrk completed; upstream µs/req: the same "
            "for the upstream nginx. Peak RSS: VmRSS summed over the proxy's processes, polled "
            "every 50 ms during the run. The proxies live through the whole benchmark, so it "
            "includes what earlier workloads left allocated; the 1000-idle workload restarts "
            "each proxy and measures a fresh one. Errors: wrk's socket errors (connect, read, "
            "write, timeout) and status (responses neither 2xx nor 3xx), summed over rounds.",
            "",
        ]
        for w in self.workloads:
            lines += [*self.workload_lines(w), ""]
        exp = self.experiment_lines()
        if exp:
            lines += [
                "## Experiments (the article's claims)",
                "",
                "Each ratio is variant / base, per round, median of rounds.",
                "",
                *exp,
                "",
            ]
        if self.notes:
            lines += ["## Errors, anomalies and checks", ""]
            lines += [f"- {n}" for n in self.notes]
            lines.append("")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        exps = [
            {k: (v.to_json() if isinstance(v, Stat) else v) for k, v in r.items()}
            for r in self.experiment_rows()
        ]
        return {
            "meta": self.meta,
            "workloads": {w: WORKLOADS[w].title for w in self.workloads},
            "subjects": {s: self.label(s) for s in {s.subject for s in self.samples}},
            "cells": [c.to_json() for c in self.cells.values()],
            "experiments": exps,
            "notes": self.notes,
            "samples": [s.to_json() for s in self.samples],
        }

    # --- chart -------------------------------------------------------------------------------

    def chart(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ws = [w for w in self.workloads if not WORKLOADS[w].idle]
        idle = [w for w in self.workloads if WORKLOADS[w].idle]
        subjects = [s for s in self.main if any((w, s) in self.cells for w in self.workloads)]
        if not subjects or not (ws or idle):
            return
        nrows = len(ws) + len(idle)
        fig, axes = plt.subplots(
            nrows, 2, figsize=(12, 1.0 + 0.32 * len(subjects) * nrows + 0.35 * nrows),
            squeeze=False,
        )  # fmt: skip
        colors = plt.get_cmap("tab10")
        ypos = list(range(len(subjects)))[::-1]
        for i, w in enumerate(ws):
            for j, (metric, title) in enumerate(
                (("rps", f"req/s (median, min{DASH}max)"), ("cpu", "proxy CPU µs per request"))
            ):
                ax = axes[i][j]
                vals, los, his = [], [], []
                for subj in subjects:
                    c = self.cell(w, subj)
                    st = (c.rps if metric == "rps" else c.cpu) if c else None
                    vals.append(st.median if st else 0)
                    los.append(st.median - st.lo if st else 0)
                    his.append(st.hi - st.median if st else 0)
                ax.barh(
                    ypos,
                    vals,
                    xerr=[los, his],
                    color=[colors(k % 10) for k in range(len(subjects))],
                    capsize=2,
                )
                for y, v, hi, subj in zip(ypos, vals, his, subjects, strict=True):
                    c = self.cell(w, subj)
                    txt = _num(v, 1 if metric == "cpu" else 0) if v else DASH
                    if metric == "rps" and c and c.ratio_rps:
                        txt += f"  ({c.ratio_rps.median:.2f}{X})"
                    ax.text(v + hi, y, "  " + txt, va="center", fontsize=7)  # past the bar
                ax.set_yticks(ypos)
                ax.set_yticklabels([self.label(s) for s in subjects], fontsize=7)
                ax.set_title(f"{WORKLOADS[w].title}: {title}", fontsize=8)
                ax.tick_params(axis="x", labelsize=7)
                ax.margins(x=0.25)
        for k, w in enumerate(idle):
            ax = axes[len(ws) + k][0]
            vals = []
            for subj in subjects:  # ("direct" has no proxy to measure: its bar stays empty)
                c = self.cell(w, subj)
                vals.append(c.rss_idle.median if c and c.rss_idle else 0)
            ax.barh(ypos, vals, color=[colors(k2 % 10) for k2 in range(len(subjects))])
            for y, v in zip(ypos, vals, strict=True):
                ax.text(v, y, f" {v:.1f} MiB" if v else " " + DASH, va="center", fontsize=7)
            ax.set_yticks(ypos)
            ax.set_yticklabels([self.label(s) for s in subjects], fontsize=7)
            ax.set_title(f"{WORKLOADS[w].title}: RSS MiB", fontsize=8)
            ax.tick_params(axis="x", labelsize=7)
            ax.margins(x=0.25)
            axes[len(ws) + k][1].axis("off")
        fig.suptitle(
            f"udsproxy vs nginx, HAProxy, Caddy ({self.meta['started']}; "
            f"{self.meta['machine']['cpus']} CPUs, proxy pinned to one core)",
            fontsize=9,
        )
        fig.tight_layout(rect=(0, 0, 1, 0.985))
        fig.savefig(path, dpi=110)
        plt.close(fig)


_SHORT = {
    "small": "small c64",
    "browser": "browser c64",
    "c1": "small c1",
    "get1k": "1 KiB",
    "get100k": "100 KiB",
    "get1m": "1 MiB",
    "post16k": "POST 16 KiB",
    "post1m": "POST 1 MiB",
    "close": "conn close",
    "idle1000": "1000 idle",
}


def _short(w: str) -> str:
    return _SHORT.get(w, w)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
