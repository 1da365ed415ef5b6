"""Sinks: each batch of finished rows becomes one Parquet file (and one WebDataset tar), written atomically
through :class:`pipeline.io.output_store.OutputStore`, which owns the output's layout."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema as S
from pipeline.config import OutputConfig
from pipeline.io.masking import mask_text, public_uri
from pipeline.io.output_store import OutputStore, batch_name, webdataset_tar
# Metadata copied into each WebDataset sample's JSON.
WDS_FIELDS = (S.VIDEO_ID, S.URI, S.START_S, S.END_S, S.CAPTION, S.MODEL, S.PROMPT_ID, S.NUM_FRAMES, S.POOLING,
              S.DURATION_S, S.FPS, S.WIDTH, S.HEIGHT, S.NUM_TOKENS, S.TRUNCATED, S.RUN_ID)


def conform(batch: pa.Table, run_id: str, created_at: datetime) -> pa.Table:
    """The output record: every schema column in order and type (missing ones null), then extra columns.

    URIs lose their credentials (user info, signatures) and error texts are scrubbed: nothing secret is stored.
    """
    n = batch.num_rows
    columns, fields = [], []
    for field in S.OUTPUT_SCHEMA:
        if field.name == S.RUN_ID:
            array = pa.array([run_id] * n, field.type)
        elif field.name == S.CREATED_AT:
            array = pa.array([created_at] * n, field.type)
        elif field.name == S.URI:
            array = pa.array([public_uri(u) for u in batch.column(S.URI).to_pylist()], field.type)
        elif field.name == S.ERROR and field.name in batch.column_names:
            array = pa.array([mask_text(e) if e is not None else None for e in batch.column(S.ERROR).to_pylist()],
                             field.type)
        elif field.name in batch.column_names:
            array = batch.column(field.name).cast(field.type)
        else:
            array = pa.nulls(n, field.type)
        columns.append(array)
        fields.append(field)
    for name in S.extra_columns(batch.column_names):
        columns.append(batch.column(name))
        fields.append(batch.schema.field(name))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _webdataset_tar(table: pa.Table, keyframes: list[bytes | None]) -> tuple[bytes, int]:
    """The captioned rows as WebDataset samples (metadata ``WDS_FIELDS`` and the keyframe), and how many."""
    samples = [(row[S.VIDEO_ID], row, jpeg) for row, jpeg in zip(table.select(list(WDS_FIELDS)).to_pylist(), keyframes)
               if row[S.CAPTION] is not None]
    return webdataset_tar(samples), len(samples)


class ShardWriter:
    """Writes one batch of finished rows and returns a one-row manifest (counts and stage times)."""

    def __init__(self, out: OutputConfig, run_id: str, storage_options: dict | None = None, guard=None) -> None:
        self.out = out
        self.run_id = run_id
        self.store = OutputStore(out.output, storage_options)
        self.guard = guard  # pipeline.lease.LeaseGuard: checked before each write (one writer per output)

    def __call__(self, batch: pa.Table) -> pa.Table:
        S.require_columns(batch.column_names, [S.VIDEO_ID, S.URI, S.ERROR], "ShardWriter")
        batch, duplicates = _without_duplicates(batch)
        table = conform(batch, self.run_id, datetime.now(timezone.utc))
        if table.num_rows == 0:  # only repeats of earlier rows: nothing to write
            return pa.table({"manifest": [json.dumps(_manifest(table, None, 0, duplicates))]})
        write_retries = [0]

        def count_write_retry() -> None:
            write_retries[0] += 1

        name = batch_name(table.column(S.VIDEO_ID).to_pylist(), self.run_id)
        shard, wds_rows = None, 0
        if "webdataset" in self.out.formats:
            keyframes = (batch.column(S.KEYFRAME_JPEG).to_pylist() if S.KEYFRAME_JPEG in batch.column_names
                         and self.out.keyframes else [None] * batch.num_rows)
            shard, wds_rows = _webdataset_tar(table, keyframes)
        if self.guard is not None:
            self.guard.check()  # raises LeaseLost: another job has taken the output over
        parquet_uri = self.store.write_batch(name, table, shard, on_retry=count_write_retry)
        manifest = _manifest(table, mask_text(parquet_uri), wds_rows, duplicates)
        manifest["read_retries"] = _column_sum(batch, S.READ_RETRIES)
        manifest["write_retries"] = write_retries[0]
        return pa.table({"manifest": [json.dumps(manifest)]})


def _column_sum(batch: pa.Table, name: str) -> int:
    return int(pc.sum(batch.column(name)).as_py() or 0) if name in batch.column_names else 0


def _without_duplicates(batch: pa.Table) -> tuple[pa.Table, int]:
    """The batch less the rows marked as repeats of an earlier list row, and how many there were."""
    if S.ERROR_REASON not in batch.column_names:
        return batch, 0
    repeated = pc.fill_null(pc.and_(pc.equal(batch.column(S.ERROR_STAGE), S.STAGE_SOURCE),
                                    pc.equal(batch.column(S.ERROR_REASON), S.REASON_DUPLICATE)), False)
    count = int(pc.sum(repeated).as_py() or 0)
    return (batch.filter(pc.invert(repeated)), count) if count else (batch, 0)


def _manifest(table: pa.Table, uri: str | None, wds_rows: int, duplicates: int = 0) -> dict:
    rows = table.select([S.ERROR, S.ERROR_STAGE, S.ERROR_REASON, S.NUM_TOKENS, S.TRUNCATED,
                         S.DECODE_S, S.DECODE_CPU_S, S.CAPTION_S, *S.FLAGS]).to_pylist()
    decode_s = [r[S.DECODE_S] for r in rows if r[S.DECODE_S] is not None]
    decode_cpu_s = [r[S.DECODE_CPU_S] for r in rows if r[S.DECODE_CPU_S] is not None]
    caption_s = [r[S.CAPTION_S] for r in rows if r[S.CAPTION_S] is not None]
    failed: dict[str, int] = {}
    for r in rows:
        if r[S.ERROR] is not None:
            key = f"{r[S.ERROR_STAGE]}/{r[S.ERROR_REASON]}"
            failed[key] = failed.get(key, 0) + 1
    return {
        "file": uri,
        "rows": len(rows),
        "ok": sum(r[S.ERROR] is None for r in rows),
        "failed": failed,
        "tokens": sum(r[S.NUM_TOKENS] or 0 for r in rows),
        "truncated": sum(bool(r[S.TRUNCATED]) for r in rows),
        "decode_s": sum(decode_s),
        "decode_cpu_s": sum(decode_cpu_s),
        "decoded": len(decode_cpu_s),  # videos sampled whole (their frames went on to the captioner)
        "caption_s": sum(caption_s),
        "captioned": len(caption_s),
        # Per video, for the run's histograms (pipeline.metrics).
        "decode_s_each": [round(x, 4) for x in decode_s],
        "caption_s_each": [round(x, 4) for x in caption_s],
        "webdataset_samples": wds_rows,
        "duplicates": duplicates,
        "read_retries": 0,
        "write_retries": 0,
        "flagged": {flag: sum(bool(r[flag]) for r in rows) for flag in S.FLAGS},
    }
