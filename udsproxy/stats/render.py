"""Envoy's admin stats output from a Snapshot: /stats, /stats?format=json, /stats/prometheus.

Pure functions: no I/O, no state beyond caches of name parsing. Names and ordering follow
Envoy's admin handlers (``source/server/admin/stats_render.cc``, ``prometheus_stats.cc``,
``grouped_stats_request.cc``); tag extraction is in ``udsproxy.stats.tags``.

Prometheus
----------
The text is produced by prometheus-client: ``EnvoyStatsCollector`` (a custom collector) yields
one ``Metric`` family per Envoy name, with the samples added as they are (``add_sample``, so no
``_total`` suffix and no ``_created`` series), it is registered in a ``CollectorRegistry`` and
``generate_latest`` writes the text. What prometheus-client writes differently from Envoy is
then changed line by line (``_envoy_lines``), and only that:

* ``# HELP`` lines are dropped (Envoy has none);
* a counter's ``# TYPE`` line, to which ``generate_latest`` appends ``_total``, gets the name
  of the family's samples (``envoy_cluster_upstream_rq``, not ``envoy_cluster_upstream_rq_total``;
  taken from the sample line, so it stays right if a later version stops appending);
* values: ``generate_latest`` prints every value as a float ("1.0", "1.234567e+06"); integral
  values are printed as integers, other ones (histogram sums) as Envoy's ``{:.32g}``;
* samples without labels get Envoy's empty braces: ``envoy_server_live{} 1``.

Label order: ``generate_latest`` sorts labels by name, Envoy keeps extraction order
(``envoy_response_code`` before ``envoy_cluster_name``). Label names are ``_LabelName`` strings
that sort by their extraction rank, so the sort reproduces Envoy's order; were the sort ever
dropped, dict order (also extraction order) would give the same text.

Order: counters, then gauges, then histograms; families by tag-extracted name, the stats of a
family by name (compared '.'-component-wise, as Envoy's symbol table does). No blank line
between families, as in Envoy's current streaming handler (grouped_stats_request.cc); the older
buffered one (prometheus_stats.cc) wrote one after each family. Parsers ignore both.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from udsproxy.stats import Histogram, Snapshot
from udsproxy.stats.tags import extract_tags, tag_extracted_name

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = [
    "SUPPORTED_QUANTILES",
    "EnvoyStatsCollector",
    "extract_tags",
    "histogram_quantiles",
    "render_json",
    "render_prometheus",
    "render_text",
]

# Envoy's HistogramStatisticsImpl::supportedQuantiles()
SUPPORTED_QUANTILES: tuple[float, ...] = (0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1)
_PERCENT_LABELS = ("0", "25", "50", "75", "90", "95", "99", "99.5", "99.9", "100")  # P{:g}
_PERCENTS_JSON = "[0,25,50,75,90,95,99,99.5,99.9,100]"


def _compile_filter(pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex in filter {pattern!r}: {exc}") from None


def _scalars(snap: Snapshot, flt: re.Pattern[str] | None, used_only: bool) -> list[tuple[str, int]]:
    """Counters and gauges together, sorted by name, as Envoy's /stats lists them."""
    out = [
        (name, value)
        for stats in (snap.counters, snap.gauges)
        for name, value in stats.items()
        if (value or not used_only) and (flt is None or flt.search(name))
    ]
    out.sort(key=lambda item: item[0])
    return out


def _histograms(
    snap: Snapshot, flt: re.Pattern[str] | None, used_only: bool
) -> list[tuple[str, Histogram]]:
    return [
        (name, hist)
        for name, hist in sorted(snap.histograms.items(), key=lambda item: item[0])
        if (hist.count or not used_only) and (flt is None or flt.search(name))
    ]


# --------------------------------------------------------------------------------- quantiles


def histogram_quantiles(
    hist: Histogram, quantiles: Iterable[float] = SUPPORTED_QUANTILES
) -> list[float]:
    """Quantiles estimated from the buckets, by linear interpolation inside the bucket that
    holds the rank (as Prometheus's histogram_quantile does; the first bucket starts at 0, a
    rank in the overflow bucket gives the last bound). NaN for every quantile when empty."""
    counts = hist.counts
    total = sum(counts)
    if total <= 0:
        return [math.nan for _ in quantiles]
    bounds = hist.bounds
    out: list[float] = []
    for q in quantiles:
        rank = q * total
        seen = 0
        estimate = float(bounds[-1]) if bounds else 0.0
        for i, n in enumerate(counts):
            seen += n
            if n and seen >= rank:
                lower = float(bounds[i - 1]) if i > 0 else 0.0
                if i >= len(bounds):  # overflow bucket: no upper bound
                    estimate = lower
                else:
                    upper = float(bounds[i])
                    estimate = lower + (upper - lower) * (rank - (seen - n)) / n
                break
        out.append(estimate)
    return out


def _fmt_double(x: float) -> str:
    """fmt's "{}" for a double: shortest round-trip text, no ".0", "nan"."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


def _json_double(x: float) -> str:
    """Envoy's Json::Streamer::number: printf "%g" (6 significant digits), NaN as null."""
    if math.isnan(x):
        return "null"
    return format(x, "g")


# -------------------------------------------------------------------------------- /stats text


def render_text(snap: Snapshot, filter: str | None = None, used_only: bool = False) -> str:
    """Envoy's /stats: "name: value" for counters and gauges sorted by name, then histograms as
    "name: P0(interval,cumulative) P25(...) ... P100(...)" (ParentHistogramImpl::quantileSummary)
    or "name: No recorded values". There is no flush interval here, so the interval quantiles are
    always "nan" (what Envoy prints for an interval without samples); the cumulative ones are
    estimated from the buckets (histogram_quantiles).

    filter: a regex searched in the dotted name (Python re); invalid -> ValueError.
    used_only: drop zero counters and gauges and histograms without samples."""
    flt = _compile_filter(filter)
    lines = [f"{name}: {value}" for name, value in _scalars(snap, flt, used_only)]
    for name, hist in _histograms(snap, flt, used_only):
        if not hist.count:
            lines.append(f"{name}: No recorded values")
            continue
        summary = " ".join(
            f"P{label}(nan,{_fmt_double(q)})"
            for label, q in zip(_PERCENT_LABELS, histogram_quantiles(hist), strict=True)
        )
        lines.append(f"{name}: {summary}")
    return "".join(line + "\n" for line in lines)


# -------------------------------------------------------------------------------- /stats json


def render_json(snap: Snapshot, filter: str | None = None, used_only: bool = False) -> str:
    """Envoy's /stats?format=json (StatsJsonRender, histograms in the default "no buckets" mode):
    {"stats":[{"name":..,"value":..},...,{"histograms":{"supported_quantiles":[0,25,...,100],
    "computed_quantiles":[{"name":..,"values":[{"cumulative":..,"interval":null},...]}]}}]}.
    The histograms entry is there only when a histogram is selected. Quantile values use
    Envoy's "%g" (null when there are no samples); the interval ones are always null (see
    render_text). Counter and gauge values are exact integers (Envoy's "%g" would print 1234567
    as 1.23457e+06)."""
    flt = _compile_filter(filter)
    entries = [
        f'{{"name":{json.dumps(name)},"value":{int(value)}}}'
        for name, value in _scalars(snap, flt, used_only)
    ]
    hists = _histograms(snap, flt, used_only)
    if hists:
        computed = []
        for name, hist in hists:
            values = ",".join(
                f'{{"cumulative":{_json_double(q)},"interval":null}}'
                for q in histogram_quantiles(hist)
            )
            computed.append(f'{{"name":{json.dumps(name)},"values":[{values}]}}')
        entries.append(
            f'{{"histograms":{{"supported_quantiles":{_PERCENTS_JSON},'
            f'"computed_quantiles":[{",".join(computed)}]}}}}'
        )
    return f'{{"stats":[{",".join(entries)}]}}'


# -------------------------------------------------------------------------- /stats/prometheus


class _LabelName(str):
    """A label name that sorts by its position in Envoy's tag order, not alphabetically, so that
    generate_latest's ``sorted(labels.items())`` keeps Envoy's label order. Equality and hashing
    stay those of str."""

    rank: int

    def __new__(cls, name: str, rank: int) -> _LabelName:
        obj = super().__new__(cls, name)
        obj.rank = rank
        return obj

    def __lt__(self, other: str) -> bool:
        if isinstance(other, _LabelName):
            return self.rank < other.rank
        return str.__lt__(self, other)

    def __gt__(self, other: str) -> bool:
        if isinstance(other, _LabelName):
            return self.rank > other.rank
        return str.__gt__(self, other)


@lru_cache(maxsize=65536)
def _prom(name: str) -> tuple[str, str, tuple[str, ...], tuple[tuple[_LabelName, str], ...]]:
    """(tag-extracted name, Prometheus name, name components, labels) of a dotted stat name."""
    extracted = tag_extracted_name(name)[0]
    stem, labels = extract_tags(name)
    ranked = tuple((_LabelName(label, i), value) for i, (label, value) in enumerate(labels))
    return extracted, stem, tuple(name.split(".")), ranked


@lru_cache(maxsize=64)
def _le_values(bounds: tuple[float, ...]) -> tuple[str, ...]:
    # Envoy: le="{:.32g}" -> "0.5", "1", "3600000"
    return (*(format(float(b), ".32g") for b in bounds), "+Inf")


class _Family:
    __slots__ = ("key", "members")

    def __init__(self, key: str) -> None:
        self.key = key  # Envoy sorts families by their tag-extracted name
        self.members: list[tuple[tuple[str, ...], str, Any]] = []


def _group(
    stats: dict[str, Any], flt: re.Pattern[str] | None, keep: Callable[[Any], object]
) -> list[tuple[str, _Family]]:
    """Stats grouped into families by Prometheus name; families and members in Envoy's order."""
    families: dict[str, _Family] = {}
    for name, value in stats.items():
        if not keep(value) or (flt is not None and not flt.search(name)):
            continue
        extracted, stem, parts, _labels = _prom(name)
        family = families.get(stem)
        if family is None:
            family = families[stem] = _Family(extracted)
        elif extracted < family.key:
            family.key = extracted
        family.members.append((parts, name, value))
    ordered = sorted(families.items(), key=lambda item: (item[1].key, item[0]))
    for _stem, family in ordered:
        family.members.sort(key=lambda member: member[0])
    return ordered


class EnvoyStatsCollector:
    """A prometheus-client collector (``collect() -> Iterable[Metric]``) over one Snapshot:
    Envoy-named families of type counter, gauge and histogram, samples added as they are.
    Its text is Envoy's only after render_prometheus's line fix-ups (see the module doc)."""

    def __init__(
        self, snap: Snapshot, *, filter: str | None = None, used_only: bool = False
    ) -> None:
        self._snap = snap
        self._filter = _compile_filter(filter)
        self._used_only = used_only

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import Metric  # imported by render_prometheus

        used_only = self._used_only
        yield from self._numeric(self._snap.counters, "counter")
        yield from self._numeric(self._snap.gauges, "gauge")
        families = _group(self._snap.histograms, self._filter, lambda h: h.count or not used_only)
        for stem, family in families:
            metric = Metric(stem, "", "histogram")
            for _parts, name, hist in family.members:
                self._add_histogram(metric, stem, name, hist)
            yield metric

    def _numeric(self, stats: dict[str, int], typ: str) -> Iterator[Metric]:
        from prometheus_client.metrics_core import Metric

        used_only = self._used_only
        for stem, family in _group(stats, self._filter, lambda v: v or not used_only):
            metric = Metric(stem, "", typ)
            for _parts, name, value in family.members:
                metric.add_sample(stem, dict(_prom(name)[3]), value)
            yield metric

    @staticmethod
    def _add_histogram(metric: Metric, stem: str, name: str, hist: Histogram) -> None:
        labels = _prom(name)[3]
        le = _LabelName("le", len(labels))
        bucket = stem + "_bucket"
        cumulative = 0
        les = _le_values(tuple(hist.bounds))
        for le_value, n in zip(les[:-1], hist.counts, strict=False):
            cumulative += n
            metric.add_sample(bucket, {**dict(labels), le: le_value}, cumulative)
        # Envoy: +Inf and _count are the sample count; _sum printed with {:.32g}
        metric.add_sample(bucket, {**dict(labels), le: "+Inf"}, hist.count)
        metric.add_sample(stem + "_sum", dict(labels), hist.sum)
        metric.add_sample(stem + "_count", dict(labels), hist.count)


def _envoy_number(text: str) -> str:
    """A value from generate_latest (Go float text) as Envoy prints it."""
    if text in ("+Inf", "-Inf", "NaN"):
        return text
    value = float(text)
    if value.is_integer():
        return str(int(value))
    return format(value, ".32g")


def _envoy_lines(exposition: str) -> Iterator[str]:
    """The documented fix-ups of generate_latest's text (module doc). Each sample line is
    "name{labels} value" with escaped label values (no raw newline) and no timestamp."""
    counter_type = False  # a counter's TYPE line waits for its first sample's name
    for line in exposition.split("\n"):
        if not line or line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            name, _, typ = line[7:].rpartition(" ")
            counter_type = typ == "counter"
            if not counter_type:
                yield f"# TYPE {name} {typ}\n"
            continue
        head, _, value = line.rpartition(" ")
        if counter_type:
            # generate_latest names the family "<name>_total"; the samples carry the real name
            yield f"# TYPE {head.partition('{')[0]} counter\n"
            counter_type = False
        if not head.endswith("}"):
            head += "{}"
        yield f"{head} {_envoy_number(value)}\n"


def render_prometheus(
    snap: Snapshot, *, filter: str | None = None, used_only: bool = False
) -> bytes:
    """Envoy's /stats/prometheus (text format 0.0.4). filter/used_only as for render_text
    (Envoy accepts ?filter= and ?usedonly there too)."""
    # Imported on first use: 20 ms of start-up (http.server, wsgiref) for an admin endpoint.
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(EnvoyStatsCollector(snap, filter=filter, used_only=used_only))
    return "".join(_envoy_lines(generate_latest(registry).decode("utf-8"))).encode("utf-8")
