"""A randomized invariant harness for the recaption output (issue 22), in the spirit of simulation testing
(FoundationDB) and Jepsen: random sequences of operations on one small output, and the output's invariants
checked after every step.

Operations (weighted, drawn from a seeded RNG, so a seed replays exactly the same sequence of choices):

- ``run``: an in-process job (the shared Ray) over a random list: txt, csv or jsonl; good, missing, broken and
  empty videos; repeated rows; planted secrets in URIs; a UTF-8 BOM; an invalid jsonl line; either of two
  prompts; ``--recaption-changed`` and ``--retry-errors`` at random;
- ``conflict``: a list giving one ``video_id`` to two videos, or (with clip windows) a row the id of another
  row's window, which must be refused with nothing run;
- ``mutate``: a video of the pool deleted, emptied or restored between runs;
- ``kill``: the job script in a subprocess, SIGKILLed after a random delay (start-up, decoding, writing or the
  final reconcile, wherever it lands);
- ``concurrent``: the job script in a subprocess and an in-process job on the same output at the same time;
- ``pause``: the job script SIGSTOPped past its lease's time to live, an in-process job taking over, SIGCONT;
- the whole sequence may run with the output on S3 behind a proxy that injects 503s, dropped connections and
  delays at a seeded rate (``faults=True``).

Invariants:

- I1 every distinct input of every list that a job finished has exactly one row (caption or error);
- I2 once a video has a caption it always has one (a newer caption may replace it, an error never);
- I3 Parquet and WebDataset agree: one sample per captioned row, with the same caption;
- I4 no planted secret appears in any byte of the output or of the logs (ours, the subprocesses', Ray's);
- I5 a job exits 0 only when every input of its list is accounted for;
- I6 after a clean finish: no temporaries, no orphan shards, no lease left behind;
- and at every step: every Parquet file of the output is readable whole (no half-written file).

``bench/soak.py --seed S --steps N`` runs it for as long as wanted; ``tests/test_invariants.py`` runs fixed seeds
in CI. A failure raises :class:`InvariantViolation` with the seed and the steps so far, to replay.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from fault_proxy import FAULTS, FaultProxy

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ("Describe the video in detail.", "Say what moves in the clip.")
BOM = "\ufeff"


class InvariantViolation(AssertionError):
    """An invariant did not hold; the message has the seed and the steps to replay."""


@dataclass
class Entry:
    """One list row: its URI, what kind of input it is, and the id the output must hold for it (None: the row
    is not a video at all, e.g. an invalid jsonl line, and gets an error row under an id of its own)."""

    uri: str
    kind: str
    video_id: str | None


@dataclass
class VideoList:
    path: Path
    entries: list[Entry]
    fmt: str
    notes: list[str] = field(default_factory=list)
    prompt: str | None = None  # the prompt of its last run
    window_s: float | None = None  # clip windows: its ids are the windows' sources (rows carry source_video)

    def expected_ids(self) -> set[str]:
        return {e.video_id for e in self.entries if e.video_id is not None}

    def bad_rows(self) -> int:
        return sum(e.video_id is None for e in self.entries)


class LogCapture(logging.Handler):
    """Everything this process logs while the harness runs (for I4)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append(self.format(record))
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is still scanned raw
            self.records.append(str(record.msg) + " " + repr(record.args))


class World:
    """One output and everything done to it. ``s3`` (``{"endpoint": url}``) puts the output on S3; with
    ``faults`` the jobs reach it through a fault-injecting proxy."""

    def __init__(self, root: Path, seed: int, s3: dict | None = None, faults: bool = False,
                 weights: dict[str, float] | None = None, lenient_faults: bool = False) -> None:
        from pipeline.generated_videos import write_video

        self.root, self.seed = Path(root), seed
        self.rng = random.Random(seed)
        self.lenient_faults = lenient_faults
        self.steps: list[str] = []
        self.weights = weights or {"run": 4, "rerun": 3, "conflict": 0.7, "mutate": 2.5, "kill": 1.5,
                                   "concurrent": 0.7, "pause": 0.4, "compact": 1.0}
        self.secrets = [f"planted/userinfo+secret-{seed}", f"planted-signature-{seed}",
                        f"planted-storage-secret-{seed}"]
        (self.root / "videos").mkdir(parents=True, exist_ok=True)
        (self.root / "lists").mkdir(exist_ok=True)
        self.pool = [write_video(str(self.root / "videos" / f"v{i}.mp4"), 160, 120, 12, 12, seed=seed * 10 + i)
                     for i in range(5)]
        self.original = {p: Path(p).read_bytes() for p in self.pool}
        broken = self.root / "videos" / "broken.mp4"
        broken.write_text("not a video at all")
        empty = self.root / "videos" / "empty.mp4"
        empty.write_bytes(b"")
        self.bad = {"broken": str(broken), "empty": str(empty), "missing": str(self.root / "videos" / "gone.mp4")}
        self.s3, self.proxy = s3, None
        self.storage_options: dict = {}
        if s3:
            import s3fs

            bucket = f"harness-{seed}-{os.getpid()}"
            s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3["endpoint"]}).makedirs(bucket, exist_ok=True)
            self.output = f"s3://{bucket}/out"
            endpoint = s3["endpoint"]
            if faults:
                self.proxy = RandomFaults(int(endpoint.rsplit(":", 1)[1]), random.Random(seed + 1)).start()
                endpoint = self.proxy.url
            # The store accepts any key; the secret is planted where users put theirs.
            self.storage_options = {"key": "harness-key-id", "secret": self.secrets[2],
                                    "client_kwargs": {"endpoint_url": endpoint},
                                    "config_kwargs": {"retries": {"max_attempts": 2}}}
            self.direct = s3fs.S3FileSystem(key="harness-key-id", secret="x",
                                            client_kwargs={"endpoint_url": s3["endpoint"]})
        else:
            self.output = str(self.root / "out")
            self.direct = None
        self.expected: set[str] = set()  # I1: ids of lists that a job finished
        self.maybe: set[str] = set()  # ids of lists whose job did not finish (killed, refused, failed)
        self.expected_sources: set[str] = set()  # the same for windowed lists: each source has its windows' rows
        self.maybe_sources: set[str] = set()  # (or a row of its own: an error, or a whole-video row done before)
        self.captioned: set[str] = set()  # I2
        self.lists: list[VideoList] = []  # lists run so far (a rerun takes one of them again)
        self.listed: dict[str, Entry] = {}  # every good-or-bad video input listed so far, for the final sweep
        self.logs = LogCapture()
        self.log_offsets: dict[Path, int] = {}
        self.outputs: list[str] = []  # subprocesses' stdout and stderr
        self.started = time.time()
        self.full_run_s = 25.0  # how long a subprocess job takes end to end (learnt as they run)

    # -- the sequence ------------------------------------------------------------------------------------
    def run(self, num_steps: int) -> None:
        from pipeline import resume

        logging.getLogger().addHandler(self.logs)
        # The in-process jobs' state in many partitions (a few KiB of Parquet each), as a large output's is.
        partition_bytes, resume.PARTITION_BYTES = resume.PARTITION_BYTES, 4096
        try:
            for _ in range(num_steps):
                op = self.rng.choices(list(self.weights), weights=list(self.weights.values()))[0]
                self._timed(getattr(self, f"op_{op}"))
            self._timed(self.op_sweep)
        finally:
            resume.PARTITION_BYTES = partition_bytes
            logging.getLogger().removeHandler(self.logs)
            if self.proxy is not None:
                self.proxy.shutdown()

    def _timed(self, op) -> None:
        """Runs one operation; its first note gets the seconds it took (where a slow sequence spent them)."""
        first, started = len(self.steps), time.monotonic()
        op()
        if len(self.steps) > first:
            self.steps[first] += f"  [{time.monotonic() - started:.1f} s]"

    def _excused(self, outcome: str) -> bool:
        """A job that ended without finishing because of store faults: allowed only with ``lenient_faults``
        (the faults are bounded, so by default the jobs' retries must absorb every one of them)."""
        return self.proxy is not None and self.lenient_faults and outcome in ("failed", "incomplete")

    def note(self, text: str) -> None:
        self.steps.append(text)

    def fail(self, message: str) -> None:
        steps = "\n".join(f"  {i + 1}. {s}" for i, s in enumerate(self.steps))
        raise InvariantViolation(f"seed {self.seed}: {message}\nsteps:\n{steps}")

    # -- inputs ------------------------------------------------------------------------------------------
    def _entry(self, kind: str) -> Entry:
        from pipeline.io.sources import stable_video_id

        if kind == "good":
            uri = self.rng.choice(self.pool)
        elif kind == "userinfo":  # stored without its user info; the bucket does not exist
            uri = f"s3://AKIAPLANTEDKEY:{self.secrets[0]}@no-such-bucket-{self.seed}/clip.mp4"
        elif kind == "signed":  # a signed URL whose server is not there
            uri = f"http://127.0.0.1:9/clip.mp4?X-Amz-Credential=AKIAPLANTED&X-Amz-Signature={self.secrets[1]}"
        else:
            uri = self.bad[kind]
        return Entry(uri, kind, stable_video_id(uri))

    def random_list(self, name: str) -> VideoList:
        rng = self.rng
        fmt = rng.choice(["txt", "csv", "jsonl"])
        kinds = rng.choices(["good", "missing", "broken", "empty", "userinfo", "signed"],
                            weights=[8, 1, 1, 1, 0.5, 0.5], k=rng.randint(1, 6))
        entries = [self._entry(k) for k in kinds]
        notes = []
        if entries and rng.random() < 0.3:
            entries.insert(rng.randrange(len(entries) + 1), rng.choice(entries))
            notes.append("a repeated row")
        path = self.root / "lists" / f"{name}.{fmt}"
        lines = []
        if fmt == "txt":
            lines = [e.uri for e in entries]
        elif fmt == "csv":
            lines = ["uri"] + [e.uri for e in entries]
        else:
            lines = [json.dumps({"uri": e.uri}) for e in entries]
            if rng.random() < 0.3:
                at = rng.randrange(len(lines) + 1)
                lines.insert(at, '{"uri": "/not/closed.mp4", ')
                entries.insert(at, Entry("", "bad_line", None))
                notes.append("an invalid jsonl line")
        text = "\n".join(lines) + "\n"
        if rng.random() < 0.2:
            text = BOM + text
            notes.append("a BOM")
        window_s = rng.choice([0.5, 0.6]) if rng.random() < 0.15 else None
        if window_s:
            notes.append(f"{window_s:g} s windows")
        path.write_text(text, encoding="utf-8")
        return VideoList(path, entries, fmt, notes, window_s=window_s)

    def config(self, listing: VideoList, **output) -> dict:
        """The job's settings as a dict (the in-process job and the job script's YAML alike). Half the lists
        run in segments of a few rows (drawn from their own generator, so a seed's other draws stay the same)."""
        segments = random.Random(f"{self.seed}:{listing.path.name}")
        segment_rows = segments.choice([2, 3, 5]) if segments.random() < 0.5 else None
        if segment_rows and f"segments of {segment_rows}" not in listing.notes:
            listing.notes.append(f"segments of {segment_rows}")
        raw = {
            "source": {"input": str(listing.path), "window_s": listing.window_s},
            "output": {"output": self.output, "formats": ["parquet", "webdataset"], **output},
            "model": {"model": "tiny"},
            "sampling": {"num_frames": 4},
            "generation": {"max_new_tokens": 6},
            "resources": {"batch_size": 2, "rows_per_file": 3, "decode_concurrency": 1, "decode_num_cpus": 0.5,
                          "caption_num_cpus": 0.5, **({"segment_rows": segment_rows} if segment_rows else {})},
            "retry": {"attempts": 6 if self.proxy else 2, "backoff_s": 0.02, "max_backoff_s": 0.2},
            "storage_options": self.storage_options,
        }
        return raw

    def _finished(self, listing: VideoList, summary: dict, what: str) -> None:
        """A job exited 0 over ``listing``: I5 and then the full check."""
        if listing.window_s:
            self.expected_sources |= listing.expected_ids()
        else:
            self.expected |= listing.expected_ids()
        for e in listing.entries:
            if e.video_id is not None:
                self.listed[e.video_id] = e
        self.check(clean=True, finished=listing, what=what)

    def _unfinished(self, listing: VideoList) -> None:
        if listing.window_s:
            self.maybe_sources |= listing.expected_ids()
        else:
            self.maybe |= listing.expected_ids()

    # -- operations --------------------------------------------------------------------------------------
    def op_run(self, listing: VideoList | None = None) -> None:
        again = listing is not None
        listing = listing or self.random_list(f"run-{len(self.steps)}")
        # A rerun leans to what users do between runs: a new prompt, captions redone where it changed.
        flags = {"recaption_changed": self.rng.random() < (0.6 if again else 0.3),
                 "retry_errors": self.rng.random() < 0.35}
        if again and listing.prompt and self.rng.random() < 0.7:
            prompt = PROMPTS[1 - PROMPTS.index(listing.prompt)]
        else:
            prompt = self.rng.choice(PROMPTS)
        listing.prompt = prompt
        self.lists.append(listing)
        self.note(f"run {listing.path.name} of {[e.kind for e in listing.entries]} ({', '.join(listing.notes)}) "
                  f"prompt {PROMPTS.index(prompt)} {flags}")
        raw_flags = {k: v for k, v in flags.items() if v}
        outcome, result = self._run_prompted(listing, prompt, **raw_flags)
        if outcome == "ok":
            self._finished(listing, result, "run")
        elif self._excused(outcome):
            self._unfinished(listing)  # a store fault outlasted the retries: said, not hidden
            self.note(f"  ended {outcome}: {str(result).splitlines()[0][:200]}")
            self.check(clean=False)
        else:
            self.fail(f"an in-process run ended {outcome}: {type(result).__name__}: {result}")

    def _run_prompted(self, listing: VideoList, prompt: str, **output) -> tuple[str, object]:
        from pipeline.config import JobConfig
        from pipeline.lease import LeaseLost, OutputBusy
        from pipeline.list_ids import IdConflict
        from pipeline.runner import RunIncomplete, run_job

        raw = self.config(listing, **output)
        raw["prompt"] = prompt
        try:
            return "ok", run_job(JobConfig.from_dict(raw))
        except LeaseLost as exc:
            return "lost", exc
        except OutputBusy as exc:
            return "busy", exc
        except IdConflict as exc:
            return "conflict", exc
        except RunIncomplete as exc:
            return "incomplete", exc
        except Exception as exc:  # noqa: BLE001 - judged by the caller
            return "failed", exc

    def op_rerun(self) -> None:
        """The same command again (same list, same batches), maybe with another prompt or flags."""
        if not self.lists:
            return self.op_run()
        return self.op_run(self.rng.choice(self.lists))

    def op_conflict(self) -> None:
        a, b = self.rng.sample(self.pool, 2)
        path = self.root / "lists" / f"conflict-{len(self.steps)}.csv"
        # Its own generator, so that a seed's other draws stay as they were before this choice existed.
        if random.Random(f"{self.seed}:conflict:{len(self.steps)}").random() < 0.5:
            path.write_text(f"video_id,uri\ntaken-{self.seed},{a}\ntaken-{self.seed},{b}\n")
            what, listing = "a list giving one id to two videos", VideoList(path, [], "csv")
            ids = [f"taken-{self.seed}"]
        else:  # a row not cut into windows (missing) under the id of another row's first window
            clash = f"source-{self.seed}_t0-500"
            path.write_text(f"video_id,uri\nsource-{self.seed},{a}\n{clash},{self.root / 'no-such-video.mp4'}\n")
            what, listing = "with clip windows, a row under another row's window id", VideoList(path, [], "csv",
                                                                                                   window_s=0.5)
            ids = [clash]
        self.note(what)
        outcome, result = self._run_prompted(listing, PROMPTS[0])
        if outcome != "conflict" and not self._excused(outcome):
            self.fail(f"{what} ended {outcome}, not refused: {result}")
        written = self._rows_by_id()
        if any(i in written for i in ids) or any(k.startswith(f"source-{self.seed}_") for k in written):
            self.fail("a refused list's id was written")
        self.check(clean=False)

    def op_mutate(self) -> None:
        recent = [e.uri for e in self.lists[-1].entries if e.kind == "good"] if self.lists else []
        video = self.rng.choice(recent if recent and self.rng.random() < 0.7 else self.pool)
        action = self.rng.choice(["delete", "empty", "restore", "restore"])
        if action == "delete" and os.path.exists(video):
            os.remove(video)
        elif action == "empty":
            open(video, "wb").close()
        else:
            Path(video).write_bytes(self.original[video])
        self.note(f"{action} {os.path.basename(video)}")

    def _job_command(self, listing: VideoList, ttl_s: float = 120.0, tokens: int = 6) -> list[str]:
        raw = self.config(listing, lease_ttl_s=ttl_s)
        raw["generation"] = {"max_new_tokens": tokens, "min_new_tokens": tokens}
        raw["prompt"] = self.rng.choice(PROMPTS)
        settings = self.root / "lists" / f"job-{len(self.steps)}.yaml"
        settings.write_text(yaml.safe_dump(raw))
        return [sys.executable, "jobs/recaption.py", "--config", str(settings)]

    def _spawn(self, args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(args, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def _collect(self, proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
        out, err = proc.communicate(timeout=timeout)
        self.outputs += [out, err]
        return proc.returncode, err

    def op_kill(self) -> None:
        """SIGKILL the job script at a random moment, or right after its first change to the output (where a
        run starts with repairs, that is its reconcile at work)."""
        listing = self.random_list(f"kill-{len(self.steps)}")
        at_first_write = self.rng.random() < 0.4
        delay = self.rng.uniform(0.0, 0.5) if at_first_write else self.rng.uniform(1.0, self.full_run_s * 1.1)
        when = f"{delay:.2f} s after its first write" if at_first_write else f"after {delay:.1f} s"
        self.note(f"kill -9 a job over {[e.kind for e in listing.entries]} {when}")
        started = time.time()
        before = self._snapshot()
        proc = self._spawn(self._job_command(listing))
        if at_first_write:
            while proc.poll() is None and not self._snapshot() - before - {("_lease.json", None)}:
                time.sleep(0.02)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        rc, err = self._collect(proc)
        if rc == 0:
            self.full_run_s = 0.7 * self.full_run_s + 0.3 * (time.time() - started)
            self._finished(listing, {}, "a job that finished before its kill")
        elif rc == -signal.SIGKILL:
            self.note("  killed")
            self._unfinished(listing)
            self.check(clean=False)
        else:
            self._judge_exit(rc, err, listing)

    def op_compact(self) -> None:
        """jobs/compact.py on the output (files merged to a tiny target, so there is something to merge),
        SIGKILLed at a random moment half the time: a compaction never loses or repeats a row, and a finished
        one leaves the output clean."""
        if not self._exists(self.output):
            return
        kill = self.rng.random() < 0.5
        at_journal = self.rng.random() < 0.6  # right after it records its groups: mid-merge, mostly
        delay = self.rng.uniform(0.0, 0.2) if at_journal else self.rng.uniform(0.5, 8.0)
        settings = self.root / "lists" / f"compact-{len(self.steps)}.yaml"
        settings.write_text(yaml.safe_dump({"storage_options": self.storage_options}))
        target_mb = self.rng.choice([0.005, 0.02, 0.1])
        when = f"{delay:.2f} s after its journal" if at_journal else f"after {delay:.1f} s"
        self.note(f"compact to {target_mb} MB" + (f", kill -9 {when}" if kill else ""))
        proc = self._spawn([sys.executable, "jobs/compact.py", self.output, "--target-mb", str(target_mb),
                            "--threads", str(self.rng.choice([1, 3])), "--config", str(settings)])
        if kill:
            journal = self._path("_state", "compaction.json")
            while at_journal and proc.poll() is None and not self._exists(journal):
                time.sleep(0.01)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        rc, err = self._collect(proc)
        if rc == -signal.SIGKILL:
            self.note("  killed")
            self.check(clean=False)
        elif rc == 0:
            self.check(clean=True, what="a compaction")
        elif rc == 1 and self._excused("failed"):
            self.note(f"  ended failed: {err.strip().splitlines()[-1][:200] if err.strip() else ''}")
            self.check(clean=False)
        else:
            self.fail(f"jobs/compact.py exited {rc}: {err[-3000:]}")

    def _snapshot(self) -> set[tuple[str, object]]:
        """The output's files with their versions (mtime or ETag), less the lease (taken before any write)."""
        if self.direct is not None:
            self.direct.invalidate_cache()
            root = self._fs_path(self.output)
            found = self.direct.find(root, detail=True) if self.direct.exists(root) else {}
            files = {(p.rsplit("/", 1)[-1], info.get("ETag")) for p, info in found.items()}
        else:
            files = set()
            for p in Path(self.output).rglob("*"):
                try:
                    files.add((p.name, p.stat().st_mtime_ns))
                except OSError:  # a temporary renamed or removed meanwhile
                    continue
        return {(name, None if name == "_lease.json" else version) for name, version in files}

    def _judge_exit(self, rc: int, err: str, listing: VideoList) -> None:
        if rc == 1 and self._excused("incomplete"):  # incomplete under store faults: said, not hidden
            self._unfinished(listing)
            self.check(clean=False)
            return
        self.fail(f"the job script exited {rc}: {err[-3000:]}")

    def op_concurrent(self) -> None:
        first, second = self.random_list(f"first-{len(self.steps)}"), self.random_list(f"second-{len(self.steps)}")
        self.note(f"two jobs at once: a subprocess over {[e.kind for e in first.entries]} and an in-process one "
                  f"over {[e.kind for e in second.entries]}")
        proc = self._spawn(self._job_command(first, tokens=40))
        self._wait_for_lease(proc)
        outcome, result = self._run_prompted(second, PROMPTS[0])
        rc, err = self._collect(proc)
        self.note(f"  subprocess exit {rc}, in-process {outcome}")
        if outcome == "ok":
            self._finished(second, result, "the in-process job of two")
        elif outcome != "busy" and not self._excused(outcome):
            self.fail(f"the in-process job beside another ended {outcome}: {result}")
        if rc == 0:
            self._finished(first, {}, "the subprocess job of two")
        elif rc == 2 and "is being written by run" in err:
            self._unfinished(first)
        else:
            self._judge_exit(rc, err, first)

    def _wait_for_lease(self, proc: subprocess.Popen, timeout: float = 120) -> bool:
        lease = self._path("_lease.json")
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            if self._exists(lease):
                return True
            time.sleep(0.1)
        return False

    def op_pause(self) -> None:
        first, second = self.random_list(f"paused-{len(self.steps)}"), self.random_list(f"taker-{len(self.steps)}")
        ttl = 3.0
        self.note(f"a job over {[e.kind for e in first.entries]} paused past its lease ({ttl:g} s), another job "
                  f"over {[e.kind for e in second.entries]} meanwhile")
        proc = self._spawn(self._job_command(first, ttl_s=ttl, tokens=60))
        held = self._wait_for_lease(proc)
        time.sleep(self.rng.uniform(0, 3))
        if held and proc.poll() is None:
            os.kill(proc.pid, signal.SIGSTOP)  # the driver only: its Ray workers go on
            time.sleep(ttl + 0.5)
        outcome, result = self._run_prompted(second, PROMPTS[1])
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        rc, err = self._collect(proc)
        self.note(f"  paused job exit {rc}, taker {outcome}")
        if outcome == "ok":
            self._finished(second, result, "the job that took the lease over")
        elif not self._excused(outcome):
            self.fail(f"the job taking over a paused job's lease ended {outcome}: {result}")
        if rc == 0:
            self._finished(first, {}, "the paused job")
        elif rc == 2 and ("lost the lease" in err or "did not refresh the lease" in err):
            self._unfinished(first)  # taken over, or its writers saw its heartbeat go stale first
        else:
            self._judge_exit(rc, err, first)

    def op_sweep(self) -> None:
        """The end of a sequence: one job over every input ever listed must finish and leave a clean output."""
        entries = list(self.listed.values()) + [self._entry("good")]
        path = self.root / "lists" / "sweep.txt"
        path.write_text("\n".join(e.uri for e in entries) + "\n")
        listing = VideoList(path, entries, "txt")
        self.note(f"sweep over {len(entries)} inputs")
        outcome, result = self._run_prompted(listing, PROMPTS[0])
        if self._excused(outcome):
            outcome, result = self._run_prompted(listing, PROMPTS[0])  # faults: the rerun finishes
        if outcome != "ok":
            self.fail(f"the final sweep ended {outcome}: {result}")
        self.expected |= self.maybe & self._rows_by_id().keys()
        self._finished(listing, result, "the final sweep")

    # -- the output, read directly -----------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join([self.output, *parts])

    def _fs_path(self, uri: str) -> str:
        return uri.split("://", 1)[1] if uri.startswith("s3://") else uri

    def _exists(self, uri: str) -> bool:
        if self.direct is not None:
            self.direct.invalidate_cache()
            return self.direct.exists(self._fs_path(uri))
        return os.path.exists(uri)

    def _files(self) -> list[str]:
        if self.direct is not None:
            self.direct.invalidate_cache()
            root = self._fs_path(self.output)
            return sorted(self.direct.find(root)) if self.direct.exists(root) else []
        return sorted(str(p) for p in Path(self.output).rglob("*") if p.is_file())

    def _read(self, path: str) -> bytes:
        if self.direct is not None:
            return self.direct.cat_file(path)
        return Path(path).read_bytes()

    def _parquet_rows(self) -> list[dict]:
        rows = []
        for path in self._files():
            name = path.rsplit("/", 1)[-1]
            if "/parquet/" in path and name.endswith(".parquet") and not name.startswith("."):
                try:
                    table = pq.read_table(io.BytesIO(self._read(path)))
                except Exception as exc:  # noqa: BLE001 - any unreadable file is the finding
                    self.fail(f"a half-written or unreadable Parquet file {name}: {exc}")
                rows += [dict(r, _file=name) for r in table.to_pylist()]
        return rows

    def _rows_by_id(self) -> dict[str, list[dict]]:
        by_id: dict[str, list[dict]] = {}
        for row in self._parquet_rows():
            by_id.setdefault(row["video_id"], []).append(row)
        return by_id

    def _shard_samples(self) -> list[tuple[str, dict]]:
        samples = []
        for path in self._files():
            name = path.rsplit("/", 1)[-1]
            if "/webdataset/" in path and name.endswith(".tar") and not name.startswith("."):
                with tarfile.open(fileobj=io.BytesIO(self._read(path))) as tar:
                    for member in tar.getmembers():
                        if member.name.endswith(".json"):
                            samples.append((member.name[: -len(".json")], json.load(tar.extractfile(member))))
        return samples

    # -- the invariants ----------------------------------------------------------------------------------
    def check(self, clean: bool, finished: VideoList | None = None, what: str = "") -> None:
        from pipeline.io.output_store import sample_key

        by_id = self._rows_by_id()
        # I2: a caption once seen is never gone (killed or failed runs included).
        for video_id in self.captioned:
            if not any(r["caption"] for r in by_id.get(video_id, [])):
                rows = by_id.get(video_id, [])
                self.fail(f"I2: {video_id} had a caption and now has {[r['error'] for r in rows] or 'no row'}")
        self.captioned |= {i for i, rows in by_id.items() if any(r["caption"] for r in rows)}
        self.check_secrets()
        if not clean:
            return
        sources = {r.get("source_video") for rows in by_id.values() for r in rows} - {None}
        # I5: the job that exited 0 accounted for every input of its list.
        if finished is not None:
            missing = finished.expected_ids() - by_id.keys() - (sources if finished.window_s else set())
            if missing:
                kinds = [e.kind for e in finished.entries if e.video_id in missing]
                self.fail(f"I5: {what} exited 0 but inputs have no row: {sorted(missing)} ({kinds})")
            bad_rows = sum(1 for rows in by_id.values() for r in rows if r["error_reason"] == "bad_row")
            if finished.bad_rows() and not bad_rows:
                self.fail(f"I5: {what} exited 0 but its invalid list line has no error row")
        # I1: exactly one row per id; every finished input present; nothing that no list named.
        repeated = {i: len(rows) for i, rows in by_id.items() if len(rows) > 1}
        if repeated:
            self.fail(f"I1: ids with more than one row after a clean finish: {repeated}")
        absent = (self.expected - by_id.keys()) | (self.expected_sources - by_id.keys() - sources)
        if absent:
            self.fail(f"I1: inputs of finished jobs with no row: {sorted(absent)}")
        asked = self.expected | self.maybe | self.expected_sources | self.maybe_sources
        phantom = {i for i, rows in by_id.items() if i not in asked and rows[0].get("source_video") not in asked
                   and rows[0]["error_stage"] != "source"}
        if phantom:
            self.fail(f"I1: rows no list asked for: {sorted(phantom)}")
        # I3: one shard sample per captioned row, same caption.
        want = {sample_key(i): rows[0]["caption"] for i, rows in by_id.items() if rows[0]["caption"]}
        samples = self._shard_samples()
        keys = [k for k, _ in samples]
        if sorted(keys) != sorted(want):
            extra = sorted(set(keys) - set(want)) + sorted({k for k in keys if keys.count(k) > 1})
            self.fail(f"I3: shards hold {len(keys)} samples for {len(want)} captioned rows; extra or repeated "
                      f"{extra[:5]}, missing {sorted(set(want) - set(keys))[:5]}")
        for key, meta in samples:
            if meta.get("caption") != want[key]:
                self.fail(f"I3: the shard's caption of {key} differs from its Parquet row")
        # I6: nothing half-done left behind.
        from pipeline.io.output_store import LEASE_FILE, TEMPORARY_PREFIX

        names = [p.rsplit("/", 1)[-1] for p in self._files()]
        leftovers = [n for n in names if n.startswith(TEMPORARY_PREFIX) or n in (LEASE_FILE, "compaction.json")]
        if leftovers:
            self.fail(f"I6: left behind after a clean finish: {leftovers}")

    def check_secrets(self) -> None:
        """I4: no planted secret in any byte of the output, our logs, the subprocesses' output or Ray's logs."""
        places = {path: self._read(path) for path in self._files()}
        places["this process's log"] = "\n".join(self.logs.records).encode()
        places["the job scripts' stdout and stderr"] = "\n".join(self.outputs).encode()
        overlap = max(len(x) for x in self.secrets)
        for log in ray_logs(self.started):  # only what was appended since the last look
            try:
                with open(log, "rb") as f:
                    start = max(0, self.log_offsets.get(log, 0) - overlap)
                    f.seek(start)
                    places[str(log)] = f.read()
                    self.log_offsets[log] = start + len(places[str(log)])
            except OSError:
                continue
        for where, data in places.items():
            for secret in self.secrets:
                if secret.encode() in data:
                    at = data.find(secret.encode())
                    context = data[max(0, at - 160): at + 40].decode(errors="replace")
                    self.fail(f"I4: a planted secret is in {where}: ...{context}...")


def ray_logs(since: float) -> list[Path]:
    """Ray's log files written since ``since`` (the shared cluster's and the subprocesses' own)."""
    root = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray"
    return [p for p in root.glob("session_*/logs/**/*") if p.is_file() and p.stat().st_mtime >= since]


# -- store faults ------------------------------------------------------------------------------------------
class RandomFaults(FaultProxy):
    """Each request fails at random (503 SlowDown, a dropped connection, a delay) with a seeded RNG, never more
    than two in a row (the jobs' bounded retries must be enough)."""

    def __init__(self, upstream_port: int, rng: random.Random, rate: float = 0.12) -> None:
        self.rng, self.rate, self.in_a_row = rng, rate, 0
        super().__init__(upstream_port, delay_s=0.2)

    def next_fault(self) -> str | None:
        if self.in_a_row >= 2 or self.rng.random() >= self.rate:
            self.in_a_row = 0
            return None
        self.in_a_row += 1
        return self.rng.choice(FAULTS)
