"""The fault cases. Each starts its own workers on its own queue prefix, injects one kind of
fault into real processes, and records one row per run through ``Suite.row``.

A row passes when every check of ``scripts.faults.checks`` holds and the peak RSS
of every worker's process tree stayed under the bound. A case that cannot even
set up (a worker that does not start) fails its row with the reason.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from kombu import Connection

from scripts.faults.checks import (
    CaseFailed,
    Finished,
    assert_complete,
    check,
    follow_up,
    layout,
    make_job,
    shards_done,
    submit,
    wait_finished,
    wait_for,
)
from scripts.faults.hostile import hostile_files, hostile_tar
from scripts.faults.receiver import Answer, Receiver, reserve_port
from scripts.faults.stack import Stack, Worker
from scripts.throughput.services import SECRET
from worker.classify.results import read_job_record, read_summary
from worker.errors import StorageError
from worker.queue.topology import TASK_SHARD, QueueNames
from worker.settings import Settings

RSS_BOUND_MB = 1536.0
"""The documented bound for a worker with default settings (docs/reliability.md)."""
MAIN_IMAGES = 400
"""Images of the job each fault hits: 40 shards of 10, long enough to hit mid-way."""
JOB_TIMEOUT_S = 300.0
POISON_QUIET_S = 8.0
"""A queue empty and no new dead letter for this long: the missing ones were dropped."""


@dataclass
class Row:
    """One line of the matrix."""

    case: str
    passed: bool
    finish_s: float | None
    """Seconds from the job's submission to its callback (None when it never came)."""
    wall_s: float
    peak_rss_mb: float
    note: str


@dataclass
class Note:
    """What a running row has to say, filled in as it goes."""

    parts: list[str] = field(default_factory=list)
    finish_s: float | None = None

    def add(self, text: str) -> None:
        self.parts.append(text)

    def finished(self, done: Finished) -> None:
        self.finish_s = round(done.seconds, 1)


@dataclass
class Suite:
    """The stack, the options, and the rows recorded so far."""

    stack: Stack
    quick: bool
    rng: random.Random
    sigkill_runs: int
    rss_bound_mb: float = RSS_BOUND_MB
    rows: list[Row] = field(default_factory=list)
    baseline_s: float | None = None
    printer: Callable[[Row], None] = lambda row: None

    @contextmanager
    def row(self, case: str) -> Iterator[Note]:
        """Time a run, catch its failure, measure peak RSS, and record the row."""
        self.stack.monitor.begin()
        started = time.monotonic()
        note = Note()
        passed = True
        try:
            yield note
        except CaseFailed as exc:
            passed = False
            note.add(f"FAIL: {str(exc).splitlines()[0][:300]}")
        except Exception as exc:  # noqa: BLE001 - a harness or service crash fails the row, not the run
            passed = False
            first = (str(exc).splitlines() or [""])[0][:300]
            note.add(f"FAIL: {type(exc).__name__}: {first}")
        peak = self.stack.monitor.peak_mb()
        if peak > self.rss_bound_mb:
            passed = False
            note.add(f"FAIL: peak RSS {peak:.0f} MB over the {self.rss_bound_mb:.0f} MB bound")
        row = Row(
            case, passed, note.finish_s, round(time.monotonic() - started, 1), round(peak), ""
        )
        row.note = "; ".join(note.parts)
        self.rows.append(row)
        self.printer(row)


@contextmanager
def workers(
    suite: Suite, tag: str, count: int = 1, *args: str, **overrides: object
) -> Iterator[tuple[Settings, Celery, list[Worker]]]:
    """``count`` workers on a fresh queue prefix; stopped and their queues removed after."""
    settings = suite.stack.settings(f"f-{tag}-{uuid.uuid4().hex[:6]}", **overrides)
    started: list[Worker] = []
    try:
        if count == 1:
            started.append(suite.stack.start_worker(settings, *args))
        else:
            threads = [
                threading.Thread(
                    target=lambda: started.append(suite.stack.start_worker(settings, *args))
                )
                for _ in range(count)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            check(len(started) == count, f"{count - len(started)} of {count} workers did not start")
        yield settings, suite.stack.producer(settings), started
    finally:
        for worker in started:
            worker.stop()
        suite.stack.remove_topology(settings)


def stage_of(stack: Stack, job: Any) -> str:
    """Where a job stands, read from the results bucket: for the note of a SIGKILL run."""
    try:
        record = read_job_record(stack.storage, layout(job))
        if record is None:
            return "queued (not yet accepted)"
        if read_summary(stack.storage, layout(job)) is not None:
            delivered = bool(stack.receiver.for_job(job.job_id))
            return "callback sent" if delivered else "summary written, callback pending"
        return f"shards {shards_done(stack, job)}/{record.shards} done"
    except StorageError as exc:
        return f"unknown ({exc})"


def main_job(suite: Suite, tag: str, path: str) -> tuple[Any, list[str]]:
    uris = suite.stack.images[:MAIN_IMAGES]
    return make_job(suite.stack, uris, path, tag=tag), uris


# --- cases ---------------------------------------------------------------------------------


def baseline(suite: Suite) -> None:
    """No fault: the reference time to finish, and the checks on a healthy run."""
    with suite.row("baseline") as note, workers(suite, "base") as (settings, app, _):
        job, uris = main_job(suite, "base", "/base")
        done = wait_finished(
            suite.stack, job, submit(suite.stack, settings, app, job), JOB_TIMEOUT_S
        )
        note.finished(done)
        assert_complete(done, uris)
        suite.baseline_s = done.seconds
        note.add(f"{len(uris)} images, {done.summary.shards} shards; {done.callback_note()}")
        follow_up(suite.stack, settings, app)


def kill_point(suite: Suite, job: Any, run: int) -> str:
    """Wait for a point of the job's life and say which. Runs 5, 15, ... kill right after
    submission, runs 10, 20, ... once the summary is written (finalisation and callback),
    the others after a random number of the job's shards is done: drawn by stage, not by
    delay, so the points cover every stage however fast the machine runs the job."""
    if run % 10 == 5:
        return "at once"
    if run % 10 == 0:
        wait_for(lambda: read_summary(suite.stack.storage, layout(job)), JOB_TIMEOUT_S, "summary")
        return "after the summary"
    record = wait_for(lambda: read_job_record(suite.stack.storage, layout(job)), 60, "job.json")
    target = max(1, round(suite.rng.random() * record.shards))
    wait_for(lambda: shards_done(suite.stack, job) >= target, JOB_TIMEOUT_S, f"{target} shards")
    return f"after {target} shards"


def sigkill(suite: Suite) -> None:
    """SIGKILL the worker at a random point of the job (see ``kill_point``); a new worker
    (the next run's victim) must finish the job."""
    runs = 1 if suite.quick else suite.sigkill_runs
    with workers(suite, "kill") as (settings, app, started):
        current = started[0]
        for run in range(1, runs + 1):
            with suite.row(f"sigkill[{run:02d}]") as note:
                job, uris = main_job(suite, "kill", "/kill")
                begun = submit(suite.stack, settings, app, job)
                aim = kill_point(suite, job, run)
                delay = time.monotonic() - begun
                current.kill()
                note.add(f"killed {aim} ({delay:.1f} s): {stage_of(suite.stack, job)}")
                current = suite.stack.start_worker(settings)
                started.append(current)
                done = wait_finished(suite.stack, job, begun, JOB_TIMEOUT_S)
                note.finished(done)
                assert_complete(done, uris)
                note.add(done.callback_note())
                follow_up(suite.stack, settings, app)


def sigterm(suite: Suite) -> None:
    """SIGTERM mid-job: the worker exits within its grace period, hands its shards back,
    and a new worker finishes the job."""
    with suite.row("sigterm") as note, workers(suite, "term") as (settings, app, started):
        job, uris = main_job(suite, "term", "/term")
        begun = submit(suite.stack, settings, app, job)
        wait_until_shards(suite, job, -1)
        victim = started[0]
        stage = stage_of(suite.stack, job)
        stopped_at = time.monotonic()
        victim.terminate()
        limit = settings.shutdown_grace_s + 15
        code = victim.process.wait(limit)
        exit_s = time.monotonic() - stopped_at
        note.add(f"SIGTERM at {stage}; exited {code} after {exit_s:.1f} s")
        check(exit_s <= settings.shutdown_grace_s + 5, f"exit took {exit_s:.1f} s")
        successor = suite.stack.start_worker(settings)
        started.append(successor)
        done = wait_finished(suite.stack, job, begun, JOB_TIMEOUT_S)
        note.finished(done)
        assert_complete(done, uris)
        note.add(done.callback_note())
        follow_up(suite.stack, settings, app)


def two_workers(suite: Suite) -> None:
    """The same job published twice at the same instant, two workers consuming. Rounds
    alternate a 5-image job (one shard: both copies race through the short road and its
    finalisation at once) and the 400-image job (40 shards, then one finalisation)."""
    rounds = 1 if suite.quick else 10
    with workers(suite, "twice", 2) as (settings, app, _):
        second_app = suite.stack.producer(settings)
        for round_ in range(1, rounds + 1):
            size = 5 if round_ % 2 else MAIN_IMAGES
            with suite.row(f"two-workers[{round_:02d}]") as note:
                _same_job_twice(suite, settings, (app, second_app), note, size)
        follow_up(suite.stack, settings, app)


def _same_job_twice(
    suite: Suite, settings: Settings, producers: tuple[Celery, Celery], note: Note, size: int
) -> None:
    uris = suite.stack.images[:size]
    job = make_job(suite.stack, uris, "/twice", tag="twice")
    gate = threading.Barrier(2)

    def send(producer: Celery) -> None:
        gate.wait()
        submit(suite.stack, settings, producer, job)

    threads = [threading.Thread(target=send, args=(producer,)) for producer in producers]
    begun = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = wait_finished(suite.stack, job, begun, JOB_TIMEOUT_S)
    note.finished(done)
    attempts = len(done.record.attempts) if done.record else 0
    note.add(f"{size} images; {done.callback_note()}; delivery.json has {attempts} attempt(s)")
    assert_complete(done, uris)
    check(
        attempts == len(done.deliveries),
        f"delivery.json records {attempts} attempts, the receiver saw {len(done.deliveries)}",
    )


def wait_until_shards(suite: Suite, job: Any, left: int) -> None:
    """Wait until all but ``left`` of the job's shards are done (``left`` < 0: just one)."""
    stack = suite.stack
    if left < 0:
        wait_for(lambda: shards_done(stack, job) >= 1, 120, "the first shard")
        return
    record = wait_for(lambda: read_job_record(stack.storage, layout(job)), 60, "job.json")
    wait_for(
        lambda: shards_done(stack, job) >= record.shards - left,
        JOB_TIMEOUT_S,
        f"all shards but {left}",
    )


def broker_restart(suite: Suite, at_finalisation: bool) -> None:
    """Stop the private RabbitMQ node mid-job (or just as the last shard finishes) for
    10 s, then start it again; the same worker must finish the job."""
    name = "rabbitmq-restart-finalise" if at_finalisation else "rabbitmq-restart-midjob"
    rounds = 1 if suite.quick or not at_finalisation else 2
    for round_ in range(1, rounds + 1):
        label = f"{name}[{round_}]" if rounds > 1 else name
        with suite.row(label) as note, workers(suite, "mq") as (settings, app, _):
            job, uris = main_job(suite, "mq", "/mq")
            begun = submit(suite.stack, settings, app, job)
            wait_until_shards(suite, job, 1 if at_finalisation else -1)
            suite.stack.broker_down(hard=at_finalisation)
            down_at = time.monotonic()
            how = "killed" if at_finalisation else "stopped"
            note.add(f"broker {how} at {stage_of(suite.stack, job)}")
            time.sleep(max(0.0, down_at + 10 - time.monotonic()))
            suite.stack.broker_up()
            note.add(f"down {time.monotonic() - down_at:.0f} s")
            done = wait_finished(suite.stack, job, begun, JOB_TIMEOUT_S)
            note.finished(done)
            assert_complete(done, uris)
            note.add(done.callback_note())
            follow_up(suite.stack, settings, app)


def s3_outage(suite: Suite, seconds: float) -> None:
    """Stop SeaweedFS mid-job for ``seconds``, then start it on the same ports and data."""
    with (
        suite.row(f"s3-outage-{seconds:g}s") as note,
        workers(suite, "s3") as (
            settings,
            app,
            _,
        ),
    ):
        job, uris = main_job(suite, "s3", "/s3")
        begun = submit(suite.stack, settings, app, job)
        wait_until_shards(suite, job, -1)
        stage = stage_of(suite.stack, job)
        suite.stack.s3_down()
        down_at = time.monotonic()
        try:
            time.sleep(max(0.0, down_at + seconds - time.monotonic()))
        finally:
            suite.stack.s3_up()
        note.add(f"S3 down at {stage} for {time.monotonic() - down_at:.0f} s")
        done = wait_finished(suite.stack, job, begun, seconds + JOB_TIMEOUT_S)
        note.finished(done)
        assert_complete(done, uris)
        codes = Counter(str(r.error.code) for r in done.results if r.error is not None)
        note.add(f"{done.callback_note()}; errors {dict(codes) or 'none'}")
        follow_up(suite.stack, settings, app)


def callbacks(suite: Suite) -> None:
    """Receiver faults: 5xx then 200, a hang past the sender's timeout, connection refused,
    410 Gone (the sender must stop), and Retry-After (the sender must wait)."""
    stack = suite.stack
    with workers(suite, "cb") as (settings, app, _):
        uris = stack.images[:5]

        def run(name: str, url: str, accepted: int = 1) -> Finished:
            job = make_job(stack, uris, "", tag=name, url=url)
            begun = submit(stack, settings, app, job)
            done = wait_finished(stack, job, begun, JOB_TIMEOUT_S, delivered=accepted > 0)
            assert_complete(done, uris, accepted=accepted)
            return done

        with suite.row("callback-5xx") as note:
            done = run("cb-5xx", stack.receiver.plan("/5xx", Answer(500), Answer(503)))
            note.finished(done)
            note.add(done.callback_note())
            check(len(done.deliveries) == 3, "expected 500, 503, 200")
        if suite.quick:
            return
        with suite.row("callback-timeout") as note:
            done = run("cb-hang", stack.receiver.plan("/hang", Answer(hang_s=6.0)))
            note.finished(done)
            note.add(f"{done.callback_note()} (sender timeout {settings.callback_timeout_s:g} s)")
        with suite.row("callback-refused") as note:
            port = reserve_port()
            late: list[Receiver] = []
            opener = threading.Timer(6.0, lambda: late.append(Receiver(SECRET, port)))
            opener.start()
            original = stack.receiver
            try:
                url = f"http://127.0.0.1:{port}/refused"
                job = make_job(stack, uris, "", tag="cb-refused", url=url)
                begun = submit(stack, settings, app, job)
                opener.join()
                stack.receiver = late[0]
                done = wait_finished(stack, job, begun, JOB_TIMEOUT_S)
                assert_complete(done, uris)
                refused = [a for a in (done.record.attempts if done.record else []) if a.error]
                note.finished(done)
                note.add(f"{len(refused)} refused attempt(s), then {done.callback_note()}")
                check(len(refused) >= 1, "no refused attempt recorded in delivery.json")
            finally:
                stack.receiver = original
                for receiver in late:
                    receiver.close()
        with suite.row("callback-410") as note:
            done = run("cb-gone", stack.receiver.plan("/gone", Answer(410)), accepted=0)
            note.finished(done)
            note.add(done.callback_note())
            check(len(done.deliveries) == 1, f"{len(done.deliveries)} requests after a 410")
            check(done.record is not None and done.record.state == "stopped", "not stopped")
        with suite.row("callback-retry-after") as note:
            url = stack.receiver.plan("/later", Answer(503, retry_after=4))
            done = run("cb-later", url)
            gap = done.deliveries[1].at - done.deliveries[0].at
            note.finished(done)
            note.add(f"{done.callback_note()}; waited {gap:.1f} s for Retry-After: 4")
            check(gap >= 3.5, f"retried after {gap:.1f} s despite Retry-After: 4")
        follow_up(stack, settings, app)


# --- poison ----------------------------------------------------------------------------------


JSON = {"content_type": "application/json"}


def _poison(celery_queue: bool) -> list[tuple[str, bytes, dict[str, Any]]]:
    """(marker, body, publish properties) for each kind of poison; the marker names the
    kind and appears in the body, so a dead letter tells which message it was."""
    token = uuid.uuid4().hex[:6]

    def mark(kind: str) -> str:
        return f"{kind}-{token}"

    found: list[tuple[str, bytes, dict[str, Any]]] = [
        (mark("garbage"), b"\x00\xff{" + mark("garbage").encode(), JSON),
        (mark("wrong-json"), json.dumps({"hello": mark("wrong-json")}).encode(), JSON),
        (mark("json-list"), json.dumps([mark("json-list"), 1]).encode(), JSON),
        (mark("text-plain"), mark("text-plain").encode(), {"content_type": "text/plain"}),
        (
            mark("pickle"),
            pickle.dumps(mark("pickle")),
            {"content_type": "application/x-python-serialize"},
        ),
    ]
    if celery_queue:
        marker = mark("task-wrong-args")
        headers = {"task": TASK_SHARD, "id": marker, "lang": "py", "argsrepr": ""}
        body = json.dumps([[{"nonsense": marker}], {}, {}]).encode()
        found.append((marker, body, {**JSON, "content_encoding": "utf-8", "headers": headers}))
    return found


def _depth(channel: Any, queue: str) -> int:
    return int(channel.queue_declare(queue, passive=True).message_count)


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else bytes(body)


def _drain_dead(channel: Any, queue: str) -> list[tuple[bytes, dict[str, Any]]]:
    letters = []
    while (message := channel.basic_get(queue, no_ack=True)) is not None:
        letters.append(
            (_as_bytes(message.body), dict(message.properties.get("application_headers") or {}))
        )
    return letters


def _poison_queue(channel: Any, queue: str, dead: str, celery_queue: bool, note: Note) -> None:
    _drain_dead(channel, dead)
    messages = _poison(celery_queue)
    for _, body, properties in messages:
        message = channel.prepare_message(body, **properties)
        channel.basic_publish(message, exchange="", routing_key=queue)
    begun = time.monotonic()
    letters: list[tuple[bytes, dict[str, Any]]] = []

    last_change = [time.monotonic()]

    def settled() -> bool:
        """All letters in; or the queue empty and nothing new for ``POISON_QUIET_S``."""
        arrived = _drain_dead(channel, dead)
        if arrived:
            letters.extend(arrived)
            last_change[0] = time.monotonic()
        if _depth(channel, queue) != 0:
            last_change[0] = time.monotonic()
            return False
        quiet = time.monotonic() - last_change[0] >= POISON_QUIET_S
        return len(letters) >= len(messages) or quiet

    with contextlib.suppress(CaseFailed):  # reported below with what did arrive
        wait_for(settled, 45, f"{len(messages)} dead letters from {queue}")
    note.finish_s = round(time.monotonic() - begun, 1)
    with_reason = sum(1 for _, headers in letters if headers.get("x-synthdetect-reason"))
    arrived = b"\n".join(body for body, _ in letters)
    lost = [marker.rsplit("-", 1)[0] for marker, _, _ in messages if marker.encode() not in arrived]
    note.add(
        f"{len(messages)} sent, {len(letters)} dead-lettered, "
        f"{with_reason} with a reason, {_depth(channel, queue)} left"
        + (f"; not dead-lettered: {', '.join(lost)}" if lost else "")
    )
    check(
        len(letters) == len(messages) and with_reason == len(messages) and not lost,
        "not every poison message reached the dead-letter queue with a reason",
    )


def poison(suite: Suite) -> None:
    """Poison on every queue (garbage, wrong JSON, wrong content type, a task with wrong
    arguments): each message must reach ``<prefix>-dead`` with a reason, the queues must
    drain, and the worker must still serve."""
    stack = suite.stack
    with workers(suite, "poison") as (settings, app, _):
        names = QueueNames.from_settings(settings)
        queues: dict[str, bool] = {names.jobs: False, names.classify: True}
        retrain_worker: Worker | None = None
        if not suite.quick:
            queues.update({names.bulk: True, names.callbacks: True, names.retrain: True})
            retrain_jobs = getattr(names, "retrain_jobs", None)
            if isinstance(retrain_jobs, str):
                queues[retrain_jobs] = False
            retrain_worker = stack.start_worker(settings, f"-Q{names.retrain}")
        try:
            with Connection(settings.broker_url) as connection:
                channel: Any = connection.channel()
                for queue, celery_queue in queues.items():
                    short = queue.removeprefix(settings.queue_prefix + "-")
                    with suite.row(f"poison:{short}") as note:
                        _poison_queue(channel, queue, names.dead, celery_queue, note)
            with suite.row("poison:after") as note:
                note.finish_s = round(follow_up(stack, settings, app), 1)
                note.add("follow-up job served")
        finally:
            if retrain_worker is not None:
                retrain_worker.stop()


# --- bad input -------------------------------------------------------------------------------


def bad_input(suite: Suite) -> None:
    """Every hostile file in one job, then a tar with a member of every type."""
    stack = suite.stack
    with workers(suite, "bad") as (settings, app, _):
        with suite.row("bad-input-files") as note:
            files = list(hostile_files(large=1 if suite.quick else 4))
            by_uri = {f"s3://{stack.bucket}/hostile/{h.name}": h for h in files}
            for uri, hostile in by_uri.items():
                stack.storage.put_bytes(uri, hostile.data)
            job = make_job(stack, list(by_uri), "/bad", tag="bad")
            done = wait_finished(stack, job, submit(stack, settings, app, job), JOB_TIMEOUT_S)
            note.finished(done)
            assert_complete(done, list(by_uri))
            wrong = []
            for result in done.results:
                code = result.error.code if result.error is not None else None
                allowed = by_uri[result.uri].codes
                if code == "internal_error" or (allowed is not None and code not in allowed):
                    wrong.append(f"{by_uri[result.uri].name}: {code}")
            codes = Counter(str(r.error.code) if r.error else "label" for r in done.results)
            note.add(f"{len(files)} files: {dict(sorted(codes.items()))}")
            check(not wrong, f"unexpected answers: {', '.join(wrong)}")
        with suite.row("bad-input-tar") as note:
            data, members = hostile_tar()
            tar_uri = f"s3://{stack.bucket}/hostile/every-member.tar"
            stack.storage.put_bytes(tar_uri, data)
            job = make_job(stack, [], "/tar", tag="tar", inputs={"kind": "tar", "tar": tar_uri})
            done = wait_finished(stack, job, submit(stack, settings, app, job), JOB_TIMEOUT_S)
            expected = [f"{tar_uri}#{m.name}" for m in members if m.kind != "directory"]
            optional = frozenset(f"{tar_uri}#{m.name}" for m in members if m.kind == "directory")
            note.finished(done)
            rows = {r.uri: r for r in done.results}
            kinds = {f"{tar_uri}#{m.name}": m.kind for m in members}
            answers = Counter(
                f"{kinds.get(uri, '?')}={r.error.code if r.error else 'label'}"
                for uri, r in rows.items()
            )
            note.add(f"{len(members)} members, {len(rows)} rows: {dict(sorted(answers.items()))}")
            assert_complete(done, expected, optional=optional)
            labelled = [u for u, r in rows.items() if kinds.get(u) != "regular" and r.error is None]
            check(not labelled, f"non-regular members got a label: {labelled}")
        follow_up(stack, settings, app)


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[Suite], None]
    tier: str
    """quick (CI-sized), standard (the default run), long (on demand: --long or --only)."""
    broker_faults: bool = False


CASES = [
    Case("baseline", baseline, "quick"),
    Case("poison", poison, "quick"),
    Case("bad-input", bad_input, "quick"),
    Case("callbacks", callbacks, "quick"),
    Case("sigkill", sigkill, "quick"),
    Case("sigterm", sigterm, "standard"),
    Case("two-workers", two_workers, "standard"),
    Case("rabbitmq-restart-midjob", lambda s: broker_restart(s, False), "standard", True),
    Case("rabbitmq-restart-finalise", lambda s: broker_restart(s, True), "standard", True),
    Case("s3-outage-10s", lambda s: s3_outage(s, 10), "standard"),
    Case("s3-outage-60s", lambda s: s3_outage(s, 60), "long"),
    Case("s3-outage-600s", lambda s: s3_outage(s, 600), "long"),
]


def clean_starts(suite: Suite) -> None:
    """Every worker the run started: none may log an error while starting."""
    with suite.row("clean-start") as note:
        started = suite.stack.workers
        noisy = {w.name: w.start_errors() for w in started if w.start_errors()}
        note.add(f"{len(started)} worker starts, {len(noisy)} logged errors while starting")
        if noisy:
            first = next(iter(noisy.values()))[0]
            event = json.loads(first).get("event", first) if first.startswith("{") else first
            note.add(f"e.g. {str(event)[:160]}")
        check(not noisy, "a worker logged errors while starting")
