"""Benchmarks of continuity against Postfix and Dovecot on this machine (issue 6).

Run it through ``scripts/bench/run`` (which installs the peers and the venv
first)::

    scripts/bench/run                      # every benchmark, 5 rounds (9 short ones), the issue's load
    scripts/bench/run --only relay --rounds 9
    scripts/bench/run --quick --rounds 1   # a tiny load: does it all still work?
    scripts/bench/run --profile            # py-spy samples of our server per round

Each benchmark starts its peers and our service in a work directory of its
own, then runs ours and the peer alternately (A B A B ...), so a noisy
machine disturbs both alike. Five rounds by default: on this 2-core VM one
round of the same server differs from the next by up to a half (the disk's
flushes, the neighbours), and the median of three still moved a ratio across
its bar from one run to the next. Nine for the SMTP throughput benchmarks,
whose rounds last 2-3 s (:data:`lab.SHORT_ROUNDS`). The table (median and range of the rounds, the
ratio ours/peer against the issue's bar, our server's CPU seconds per
message) is printed and written to ``scripts/bench/results/latest.md`` and
``latest.json`` (``quick.*`` for ``--quick``). Benchmark families are the
modules ``bench_*.py`` beside this file; adding one is adding a module with
a ``BENCHMARKS`` list.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib
import os
import platform
import resource
import subprocess
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from dovecot import Dovecot  # noqa: E402
from lab import Benchmark, Lab, free_port  # noqa: E402
from profiling import summary  # noqa: E402
from report import Row, load_previous, markdown, table_rows, write  # noqa: E402


def discover() -> list[Benchmark]:
    """Every benchmark of every ``bench_*.py`` module, in the order of issue 6's table."""
    from report import ISSUE_ROWS

    found: list[Benchmark] = []
    for path in sorted(HERE.glob("bench_*.py")):
        found.extend(importlib.import_module(path.stem).BENCHMARKS)
    order = {name: index for index, (name, _, _) in enumerate(ISSUE_ROWS)}
    return sorted(found, key=lambda b: order.get(b.name, len(order)))


def _version(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10)
        return (result.stdout or result.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def machine_facts() -> dict[str, str]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import twisted

    return {
        "cpu": f"{os.cpu_count()} x {model}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "postfix": _version(["/usr/sbin/postconf", "-dh", "mail_version"]),
        "dovecot": _version(["/usr/sbin/dovecot", "--version"]),
    }


def raise_file_limit() -> None:
    """As many open files as allowed: the idle-connection benchmarks hold thousands (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))


def check_dovecot(lab: Lab) -> str:
    """Start an isolated Dovecot and log in over IMAP and POP3 (the launcher the IMAP/POP3 benchmarks use)."""
    dovecot = Dovecot(lab.path("dovecot-check"), free_port(), free_port(), {"user0@bench.test": "Bench-Secret-1"})
    with dovecot.started():
        return dovecot.check()


def run_benchmark(lab: Lab, benchmark: Benchmark, rounds: int, measured: str, load: str) -> Row:
    ours, peer, error = [], [], ""
    lab.say(f"{benchmark.name}: starting")
    try:
        benchmark.start(lab)
        for number in range(1, rounds + 1):
            ours.append(benchmark.ours(lab, number))
            lab.say(f"{benchmark.name} round {number}: ours {ours[-1].value:.4g} {benchmark.unit}")
            peer.append(benchmark.peer(lab, number))
            lab.say(f"{benchmark.name} round {number}: {benchmark.peer_label} {peer[-1].value:.4g} {benchmark.unit}")
    except Exception as exc:  # one broken benchmark must not hide the others' results
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    finally:
        try:
            benchmark.stop(lab)
            lab.benchmark_done()
        except Exception:
            traceback.print_exc()
    return Row.of(benchmark, ours, peer, error, measured, load)


def rounds_text(rounds: dict[str, int]) -> str:
    """``5 round(s)``, or ``5 round(s) (9: relay, emergency)`` when some benchmarks ran another count."""
    counts = collections.Counter(rounds.values())
    usual = counts.most_common(1)[0][0] if counts else 0
    others = "; ".join(f"{n}: {', '.join(name for name, v in rounds.items() if v == n)}"
                       for n in sorted(counts) if n != usual)
    return f"{usual} round(s)" + (f" ({others})" if others else "")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of ours and the peer, alternately (default: 5; 9 for relay, emergency and"
                             " submission, whose rounds are short)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this benchmark (repeat, or NAME,NAME); see --list")
    parser.add_argument("--quick", action="store_true", help="a tiny load, to check that everything works")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--output", type=Path, default=HERE / "results",
                        help="where to write the results (scripts/bench/results)")
    parser.add_argument("--workdir", type=Path, help="keep the peers' and our data here (default: a temp dir)")
    parser.add_argument("--profile", action="store_true",
                        help="record our server with py-spy during each of our rounds (OUTPUT/profiles/)")
    parser.add_argument("--skip-dovecot-check", action="store_true",
                        help="do not start Dovecot for the pre-flight IMAP/POP3 login check")
    args = parser.parse_args(argv)
    args.only = {name for value in args.only for name in value.split(",") if name}
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    benchmarks = discover()
    if args.list:
        for benchmark in benchmarks:
            print(f"{benchmark.name:12} {benchmark.figure} ({benchmark.bar_text()} {benchmark.peer_label})")
        return 0
    unknown = args.only - {b.name for b in benchmarks}
    if unknown:
        print(f"bench: no benchmark named {', '.join(sorted(unknown))} (see --list)", file=sys.stderr)
        return 2
    selected = [b for b in benchmarks if not args.only or b.name in args.only]
    raise_file_limit()
    profile_dir = args.output / "profiles" if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    lab = Lab(args.workdir, args.quick, profile_dir=profile_dir)
    load = "quick" if args.quick else "full"
    measured = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rounds = {benchmark.name: args.rounds or benchmark.rounds for benchmark in selected}
    facts = {"date": measured, "load": load, "rounds": rounds, "machine": machine_facts()}
    rows: dict[str, Row] = {}
    failed = False
    try:
        if not args.skip_dovecot_check:
            try:
                lab.say(check_dovecot(lab))
            except Exception as exc:
                traceback.print_exc()
                lab.say(f"Dovecot check failed: {exc}")
                failed = True
        for benchmark in selected:
            rows[benchmark.name] = row = run_benchmark(lab, benchmark, rounds[benchmark.name], measured, load)
            failed = failed or bool(row.error)
    finally:
        lab.close()
    stem = "quick" if args.quick else "latest"
    previous = load_previous(args.output / f"{stem}.json") if args.only else {}
    machine = facts["machine"]
    header = (f"Measured {measured} on {machine['cpu']}, Linux {machine['kernel']}, Python {machine['python']}, "
              f"Twisted {machine['twisted']}, Postfix {machine['postfix']}, Dovecot {machine['dovecot']}; "
              f"{rounds_text(rounds)}, {load} load.")
    table = table_rows(rows, previous)
    path = write(args.output, stem, table, header, facts, measured)
    print(markdown(table, header, measured))
    print(f"bench: written to {path}", file=sys.stderr)
    if profile_dir is not None:
        for raw in sorted(profile_dir.glob("*.txt")):
            if not raw.name.endswith(".summary.txt"):
                raw.with_suffix(".summary.txt").write_text(summary(raw))
        print(f"bench: py-spy samples and summaries in {profile_dir}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
