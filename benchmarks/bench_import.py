"""1. Import cost at DAG parse time: our operator modules vs the HTTP provider and the Cloudflare SDK.

Each sample is a fresh ``python -c`` that imports ``airflow.sdk`` first (every DAG file does), then
times only the candidate's import; candidates take turns within each round so drift hits all alike.

Bytecode: this venv holds no ``.pyc`` files (uv does not compile on install, and the environment
may set PYTHONDONTWRITEBYTECODE), so every import would recompile sources and the figure would
measure the compiler. Children read and write bytecode under ``.work/pycache`` instead (see
``common.child_env``; an untimed first pass fills it): the targets apply to that, the normal
state of an installed package. Every candidate is also timed with no bytecode for the modules it
imports itself (``airflow.sdk`` still cached), report only, as a read-only, never-compiled
install sees it.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from common import PYTHON, ROOT, WORK, Result, child_env, median, run_json
from table import Figure, Row

OURS = {
    "operators.finetune": "import airflow_provider_cfai.operators.finetune",
    "operators.inference": "import airflow_provider_cfai.operators.inference",
    "operators.batch": "import airflow_provider_cfai.operators.batch",
}
ANCHORS = {
    "http provider": "import airflow.providers.http.operators.http",
    "cloudflare SDK": "from cloudflare import Cloudflare",
}
# httpx and fsspec are not listed: airflow.sdk itself imports them, so every DAG file pays them already.
# pydantic_ai: the common-ai extra's connection type is declared as data; only its hook imports it.
HEAVY = ["requests", "requests_toolbelt", "fastapi", "uvicorn", "redis", "openlineage", "pydantic_ai"]
TARGET_MS = 5.0

PROBE = """
import json, sys, time
import airflow.sdk
if {cold}:  # compile the candidate's modules from source: look up bytecode in an empty tree, write none
    sys.pycache_prefix, sys.dont_write_bytecode = {empty!r}, True
before = set(sys.modules)
start = time.perf_counter()
{statement}
elapsed = time.perf_counter() - start
new = {{name.split(".")[0] for name in set(sys.modules) - before}}
print(json.dumps({{"ms": elapsed * 1000, "heavy": sorted(new & set(json.loads(sys.argv[1])))}}))
"""


def _sample(statement: str, *, cold: bool) -> dict[str, Any]:
    code = PROBE.format(statement=statement, cold=cold, empty=str(WORK / "pycache-empty"))
    return dict(run_json([PYTHON, "-c", code, json.dumps(HEAVY)], env=child_env(), timeout=300))


def run(emulator: Any, *, smoke: bool) -> Result:
    statements = {**OURS, **ANCHORS}
    for statement in statements.values():  # untimed: writes the bytecode cache, warms the page cache
        _sample(statement, cold=False)
    keys = [(name, cold) for cold in (False, True) for name in statements]
    rounds = 1 if smoke else 9
    times: dict[tuple[str, bool], list[float]] = {key: [] for key in keys}
    heavy: dict[str, set[str]] = {name: set() for name in statements}
    for r in range(rounds):
        for name, cold in keys[r % len(keys) :] + keys[: r % len(keys)]:
            out = _sample(statements[name], cold=cold)
            times[name, cold].append(out["ms"])
            heavy[name].update(out["heavy"])

    rows: list[Row] = []
    notes: list[str] = []
    limit = Figure(TARGET_MS, "ms")
    for cold in (False, True):
        http = Figure(median(times["http provider", cold]), "ms")  # the samples are in ms
        sdk = Figure(median(times["cloudflare SDK", cold]), "ms")
        for name in OURS:
            label = f"import {name} after airflow.sdk{', no .pyc' if cold else ''} (n={rounds}; cloudflare SDK: {sdk})"
            ours = Figure(median(times[name, cold]), "ms")
            # Without .pyc the figure is reported only: the target is for an installed package.
            row = Row("1", label, ours, anchor=http, anchor_name="http provider", max_value=None if cold else limit)
            rows.append(row)
            if row.verdict is False:
                notes.append(_importtime_profile(statements[name]))
    ours_heavy = sorted(set().union(*(heavy[n] for n in OURS)))
    anchor_heavy = "; ".join(f"{n}: {', '.join(sorted(heavy[n])) or 'none'}" for n in ANCHORS)
    label = f"heavy libraries newly imported ({'/'.join(HEAVY)}; {anchor_heavy})"
    rows.append(Row("1", label, ", ".join(ours_heavy) or "none", target="none", ok=not ours_heavy))
    return Result(rows, notes)


def _importtime_profile(statement: str, top: int = 12) -> str:
    """``python -X importtime`` of a slow import: the modules with the largest self time."""
    code = f"import airflow.sdk\nimport sys\nprint('--mark--', file=sys.stderr)\n{statement}"
    proc = subprocess.run(
        [PYTHON, "-X", "importtime", "-c", code], capture_output=True, text=True, env=child_env(), cwd=ROOT, check=True
    )
    after = proc.stderr.split("--mark--", 1)[-1]
    entries = []
    for line in after.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[0].strip().isdigit():
            entries.append((int(parts[0]), int(parts[1]), parts[2].rstrip()))
    entries.sort(reverse=True)
    body = "\n".join(
        f"    {self_us:>8} µs self {cum_us:>9} µs cumulative  {name}" for self_us, cum_us, name in entries[:top]
    )
    return f"Import profile of `{statement}` after `import airflow.sdk` (`-X importtime`, top self times):\n\n{body}"
