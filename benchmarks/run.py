"""Run every benchmark against one local emulator and print one table of figures beside their anchors.

    .venv/bin/python benchmarks/run.py            # full: writes benchmarks/results.md, fails on a missed target
    .venv/bin/python benchmarks/run.py --smoke    # CI: small sizes, fails only if a script is broken

Timing targets are relative to anchors measured in the same run, so a slow or noisy machine shifts
both sides; smoke mode reports them but never fails on them (its samples are too few to judge).
Every ratio in the table is the printed "ours" figure divided by the printed anchor, and targets are
judged on printed figures (``table.py`` says how); ``README.md`` beside this file says how to add a
benchmark or a row.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
import traceback

import bench_batch
import bench_bulk
import bench_call
import bench_e2e
import bench_emulator
import bench_import
import bench_multiprocess
import bench_upload
from common import BENCH_DIR, CONN_ID, ROOT, WORK, machine_header
from table import Row, render_table

BENCHES = {
    "1": ("import", bench_import),
    "2": ("call", bench_call),
    "3": ("upload", bench_upload),
    "4": ("bulk", bench_bulk),
    "5": ("end to end", bench_e2e),
    "6": ("emulator", bench_emulator),
    "7": ("batch", bench_batch),
    "8": ("multi-process pacing", bench_multiprocess),
}
# Far above anything a benchmark sends, so only bench_bulk (which sets its own) meets a 429, while
# the emulator still sends Ratelimit headers and the hook still parses them, as with Cloudflare.
UNLIMITED = 1_000_000_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="small and quick; never fails on timing targets")
    parser.add_argument("--only", help="comma-separated benchmark numbers, e.g. 2,3 (for development)")
    args = parser.parse_args()
    selected = args.only.split(",") if args.only else list(BENCHES)
    mode = "smoke" if args.smoke else "full"
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable
    command = shlex.join([python, os.path.relpath(__file__, ROOT), *sys.argv[1:]])

    # This process runs hooks too (bench_call, set-up calls): same scratch home as every child.
    os.environ["AIRFLOW_HOME"] = str(WORK / "airflow")
    from airflow_provider_cfai.testing import run_emulator

    started = time.monotonic()
    data_dir = WORK / "emulator"
    shutil.rmtree(data_dir, ignore_errors=True)  # the emulator would reload finetunes from a previous run
    data_dir.mkdir(parents=True)
    rows: list[Row] = []
    notes: list[str] = []
    samples: list[str] = []
    broken: list[str] = []
    with run_emulator(data_dir=data_dir, rate_limit=UNLIMITED) as emulator:
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = emulator.connection_json()
        for number in selected:
            name, module = BENCHES[number]
            print(f"[{time.monotonic() - started:6.1f}s] {number}. {name} ...", flush=True)
            try:
                result = module.run(emulator, smoke=args.smoke)
            except Exception:
                traceback.print_exc()
                broken.append(f"{number}. {name}")
                rows.append(Row(number, f"{name}: benchmark failed (see log)", "ERROR", target="runs", ok=False))
                continue
            finally:
                emulator.reset(settings=True)
            rows.extend(result.rows)
            notes.extend(result.notes)
            samples.extend(result.samples)
    elapsed = time.monotonic() - started

    report = [machine_header(command, mode), f"- Wall time of this run: {elapsed:.0f} s", "", render_table(rows)]
    if broken:
        report += ["", f"**Broken benchmarks:** {', '.join(broken)}"]
    if samples:
        report += ["", "## Raw samples", "", *(f"- {line}" for line in samples)]
    if notes:
        report += ["", "## Diagnostics for missed targets", "", *(n + "\n" for n in notes)]
    text = "\n".join(report).rstrip() + "\n"
    print("\n" + text)
    out = WORK / "results-smoke.md" if args.smoke else BENCH_DIR / "results.md"
    if args.only:
        out = WORK / f"results-{mode}-partial.md"  # a partial run never replaces the real results
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"Wrote {os.path.relpath(out, ROOT)} ({mode} mode, {elapsed:.0f} s)")

    if broken:
        return 1
    missed = [row for row in rows if row.verdict is False]
    if missed and not args.smoke:
        print(f"{len(missed)} target(s) missed: " + "; ".join(f"{r.bench}. {r.figure}" for r in missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
