"""One table, the contenders side by side, from the figures the scenarios return: "never"
where a contender never got there, "-" where the scenario did not run for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from bench.scenarios import median_and_p99

Figures = dict[str, Any]
Cell = Callable[[Figures], str]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _cold_time(f: Figures) -> str:
    cold = f.get("cold")
    if not cold:
        return "-"
    if cold["seconds"] is not None:
        return _seconds(cold["seconds"])
    if cold["at_value"] == 0:
        return "never"
    return f"never ({cold['at_value']}/{cold['backends']})"


def _calls(key: str) -> Cell:
    def cell(f: Figures) -> str:
        part = f.get(key)
        if not part:
            return "-"
        calls = part["calls"]
        total = sum(n for kind, n in calls.items() if kind != "rejected")
        split = "/".join(str(calls.get(k, 0)) for k in ("list", "get", "patch", "op"))
        return f"{total} ({split})"

    return cell


def _get(*path: str, fmt: Callable[[Any], str] = str) -> Cell:
    def cell(f: Figures) -> str:
        value: Any = f
        for key in path:
            if not isinstance(value, dict) or value.get(key) is None:
                return "-"
            value = value[key]
        return fmt(value)

    return cell


def _restart_times(f: Figures) -> str:
    r = f.get("restart")
    if not r:
        return "-"
    text = _seconds(r["to_watch"])
    return text if r.get("to_ready") is None else f"{text} / {_seconds(r['to_ready'])}"


def _restart_calls(f: Figures) -> str:
    r = f.get("restart")
    if not r:
        return "-"
    c = r["calls"]
    return f"{c.get('get', 0)} / {c.get('patch', 0)} (+{c.get('list', 0)} list)"


def _latency(f: Figures) -> str:
    lat = f.get("latency")
    if not lat:
        return "-"
    pair = median_and_p99(lat["seconds"])
    if pair is None:
        return "never"
    text = f"{pair[0] * 1000:.0f} / {pair[1] * 1000:.0f} ms"
    missed = lat["changes"] - lat["seen"]
    return text if not missed else f"{text} ({missed} missed)"


def _paced(f: Figures) -> str:
    p = f.get("paced")
    if not p:
        return "-"
    pair = median_and_p99(p["seconds"])
    times = "never" if pair is None else f"{pair[0] * 1000:.0f} / {pair[1] * 1000:.0f} ms"
    missed = p["changes"] - p["seen"]
    text = f"{times}, {p['cpu_per_change'] * 1000:.0f} ms CPU"
    return text if not missed else f"{text} ({missed} missed)"


def _shared(f: Figures) -> str:
    p = f.get("shared")
    if not p:
        return "-"
    pair = median_and_p99(p["seconds"])
    times = "never" if pair is None else f"p50 {pair[0] * 1000:.0f} ms"
    return f"{p['cpu_per_change'] * 1000:.0f} ms CPU, {times}"


def _shared_writes(f: Figures) -> str:
    p = f.get("shared")
    if not p:
        return "-"
    return f"{p['events_per_change']:.1f} / {p['api_writes_per_change']:.1f}"


def _closes(f: Figures) -> str:
    c = f.get("closes")
    return "-" if not c else f"{c['applied']}/{c['closes']}"


def _cpu(key: str) -> Cell:
    def cell(f: Figures) -> str:
        part = f.get(key)
        if not part or part.get("cpu") is None:
            return "-"
        share = 100 * part["cpu"] / part["seconds"]
        return f"{part['cpu']:.2f} s ({share:.1f}%)"

    return cell


def _mb(f: Figures) -> str:
    kib = f.get("peak_kib")
    return "-" if not kib else f"{kib / 1024:.0f} MB"


def _kib(*path: str) -> Cell:
    return _get(*path, fmt=lambda kib: f"{kib / 1024:.0f} MB" if kib else "-")


def _relist(f: Figures) -> str:
    r = f.get("relist")
    if not r:
        return "-"
    return f"{r['peak_kib'] / 1024:.0f} MB / {_count(r['ingress_lists'])}"


def _relist_around(f: Figures) -> str:
    r = f.get("relist")
    if not r:
        return "-"
    again = "never" if r["to_watch"] is None else _seconds(r["to_watch"])
    return f"{r['rss_before_kib'] / 1024:.0f} MB / {again} / {r['calls'].get('patch', 0)}"


def _resyncs(f: Figures) -> str:
    rows = (f.get("resyncs") or {}).get("after")
    if not rows:
        return "-"
    return " ".join(f"{r['rss_kib'] / 1024:.1f}" for r in rows) + " MB"


def size_rows(n: int, any_figures: Figures) -> list[tuple[str, Cell]]:
    cold = any_figures.get("cold") or {}
    steady = any_figures.get("steady") or {}
    return [
        (f"cold start: all {cold.get('backends', n)} backends at 3600 s", _cold_time),
        ("  time to its first Ingress watch", _get("cold", "to_watch", fmt=_seconds)),
        (
            f"  Compute calls (list/get/patch/op), min {cold.get('minimum', '?')}",
            _calls("cold"),
        ),
        ("  Ingress LISTs / apiserver writes", _pair("cold", "ingress_lists", "api_writes")),
        ("restart, all right: to watch (/ to ready)", _restart_times),
        ("  Compute GET / PATCH after restart", _restart_calls),
        ("  Ingress LISTs / apiserver writes", _pair("restart", "ingress_lists", "api_writes")),
        (
            f"steady {steady.get('seconds', 0):.0f} s, {steady.get('flips', '?')} health flips:"
            " Compute writes (0 due)",
            _get("steady", "writes"),
        ),
        ("  Compute reads / apiserver writes", _pair("steady", "reads", "api_writes")),
        ("  CPU during the flips", _cpu("steady")),
        ("change -> PATCH at the fake, p50 / p99", _latency),
        ("a change a second: p50 / p99, CPU per change", _paced),
        ("watch closed cleanly: changes applied", _closes),
        (
            "  new Ingress LISTs (0 due) / WATCHes",
            _pair("closes", "ingress_lists", "ingress_watches"),
        ),
        ("forced relist (410 in the watch): peak RSS / LISTs (1 due)", _relist),
        ("  RSS before it / to watch again / Compute PATCHes (0 due)", _relist_around),
        ("RSS before the resyncs, then after each (--only resyncs)", _resyncs),
        ("RSS at its first Ingress LIST (fixed cost)", _kib("cold", "rss_start_kib")),
        ("peak RSS (VmHWM)", _mb),
        ("idle CPU", _cpu("idle")),
    ]


def mix_rows(any_figures: Figures) -> list[tuple[str, Cell]]:
    cold = any_figures.get("cold") or {}
    return [
        (f"cold start: {cold.get('backends', '?')} annotated backends at 3600 s", _cold_time),
        ("  time to its first Ingress watch", _get("cold", "to_watch", fmt=_seconds)),
        (
            f"  Compute calls (list/get/patch/op), min {cold.get('minimum', '?')}",
            _calls("cold"),
        ),
        ("  Ingress LISTs / apiserver writes", _pair("cold", "ingress_lists", "api_writes")),
        ("peak RSS (VmHWM)", _mb),
        ("idle CPU", _cpu("idle")),
    ]


def shared_rows(any_figures: Figures) -> list[tuple[str, Cell]]:
    cold = any_figures.get("cold") or {}
    return [
        ("cold start: the one backend at 3600 s", _cold_time),
        (
            f"  Compute calls (list/get/patch/op), min {cold.get('minimum', '?')}",
            _calls("cold"),
        ),
        ("  Ingress LISTs / apiserver writes", _pair("cold", "ingress_lists", "api_writes")),
        ("one claimant changes: CPU per change, latency", _shared),
        ("  Events / apiserver writes per change", _shared_writes),
        ("peak RSS (VmHWM)", _mb),
    ]


def at_size_rows(sizes: Sequence[str]) -> list[tuple[str, Cell]]:
    """A change a second at the smallest and the largest size: their ratio."""
    low, high = sizes[0], sizes[-1]

    def ratio(key: str) -> Cell:
        def cell(f: Figures) -> str:
            a, b = (f.get(size, {}).get("paced") or {} for size in (low, high))
            if not a or not b:
                return "-"
            if key == "cpu_per_change":
                x, y = a[key], b[key]
            else:
                pa, pb = median_and_p99(a["seconds"]), median_and_p99(b["seconds"])
                if pa is None or pb is None:
                    return "-"
                x, y = (pa[0], pb[0]) if key == "p50" else (pa[1], pb[1])
            return "-" if not x else f"{y / x:.2f}x"

        return cell

    return [
        (f"  CPU per change, N={high} / N={low}", ratio("cpu_per_change")),
        (f"  p50 latency, N={high} / N={low}", ratio("p50")),
        (f"  p99 latency, N={high} / N={low}", ratio("p99")),
    ]


def _pair(key: str, a: str, b: str) -> Cell:
    def cell(f: Figures) -> str:
        part = f.get(key)
        return "-" if not part else f"{_count(part.get(a))} / {_count(part.get(b))}"

    return cell


def _count(value: Any) -> str:
    """A number, or LISTs as {"lists", "pages"}: "1", or "1 (200 pages)" when paged."""
    if isinstance(value, dict):
        lists, pages = value["lists"], value["pages"]
        return str(lists) if pages == lists else f"{lists} ({pages} pages)"
    return "-" if value is None else str(value)


def table(results: Figures, names: Sequence[str]) -> str:
    lines: list[list[str]] = [["", *names]]
    for size, by_name in results.get("sizes", {}).items():
        sample: Figures = next((f for f in by_name.values() if f.get("cold")), {})
        lines.append([f"N = {size} Ingresses, 1 backend each", *([""] * len(names))])
        lines += _section(size_rows(int(size), sample), by_name, names)
    sizes = sorted(results.get("sizes", {}), key=int)
    if len(sizes) > 1:
        by_name = {
            name: {size: results["sizes"][size].get(name) or {} for size in sizes} for name in names
        }
        lines.append(["changes at size (a change a second)", *([""] * len(names))])
        lines += _section(at_size_rows(sizes), by_name, names)
    shared = results.get("shared")
    if shared:
        sample = next((f for f in shared["contenders"].values() if f.get("cold")), {})
        lines.append([shared["title"], *([""] * len(names))])
        lines += _section(shared_rows(sample), shared["contenders"], names)
    mix = results.get("mix")
    if mix:
        sample = next((f for f in mix["contenders"].values() if f.get("cold")), {})
        lines.append([mix["title"], *([""] * len(names))])
        lines += _section(mix_rows(sample), mix["contenders"], names)
    widths = [max(len(row[i]) for row in lines) for i in range(len(names) + 1)]
    out = []
    for row in lines:
        is_heading = all(not cell for cell in row[1:]) and row[0]
        if is_heading:
            out.append(row[0])
            continue
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        out.append("  ".join(cells).rstrip())
    rule = "-" * len(max(out, key=len))
    return "\n".join([out[0], rule, *out[1:]])


def _section(
    rows: Sequence[tuple[str, Cell]], by_name: dict[str, Figures], names: Sequence[str]
) -> list[list[str]]:
    figures = [by_name.get(name) or {} for name in names]
    out = [[f"  {label}", *(cell(f) for f in figures)] for label, cell in rows]
    if any(f.get("failed") for f in figures):
        out.append(["  failed (see its log)", *(f.get("failed") or "" for f in figures)])
    return out
