"""The data contract: column names of every stage and the output Parquet schema, in one place."""

from __future__ import annotations

import pyarrow as pa

# -- input rows (VideoRef) -----------------------------------------------------------------------------
VIDEO_ID = "video_id"
URI = "uri"
START_S = "start_s"
END_S = "end_s"
# An input-list column: when set, ``uri`` is a folder of JPEG frames numbered from 00001.jpg, at this many
# frames per second of the video they were taken from (MVBench stores some tasks so), read by the decode actors.
FRAMES_FPS = "frames_fps"
SOURCE_VIDEO = "source_video"  # clip windows (pipeline.windows): the id of the video a window was cut from

# -- set by stages ------------------------------------------------------------------------------------
ERROR = "error"
ERROR_STAGE = "error_stage"
ERROR_REASON = "error_reason"
FRAMES = "frames"  # uint8 (T, S, S, 3); empty (0, S, S, 3) on error rows; never written out
KEYFRAME_JPEG = "keyframe_jpeg"  # JPEG bytes of the middle sampled frame (WebDataset only)
READ_RETRIES = "read_retries"  # transient read failures retried for this video (counted in the run summary)
CAPTION = "caption"
MODEL = "model"
PROMPT_ID = "prompt_id"
NUM_FRAMES = "num_frames"
POOLING = "pooling"
DURATION_S = "duration_s"
FPS = "fps"
WIDTH = "width"
HEIGHT = "height"
FRAME_COUNT = "frame_count"
DECODER = "decoder"
NUM_TOKENS = "num_tokens"
TRUNCATED = "truncated"
DECODE_S = "decode_s"
# CPU-seconds of the decode itself (all threads of the decode actor's process while it sampled this video)
DECODE_CPU_S = "decode_cpu_s"
# The source frame indices the sampled frames came from (display order; sampling.snap may move them)
FRAME_INDICES = "frame_indices"
CAPTION_S = "caption_s"
FLAG_EMPTY = "flag_empty"
FLAG_TRUNCATED = "flag_truncated"
FLAG_REPETITION = "flag_repetition"
FLAG_PROMPT_ECHO = "flag_prompt_echo"
FLAG_SHORT = "flag_short"
REPEAT_RATIO = "repeat_ratio"
FLAGS = (FLAG_EMPTY, FLAG_TRUNCATED, FLAG_REPETITION, FLAG_PROMPT_ECHO, FLAG_SHORT)
RUN_ID = "run_id"
CREATED_AT = "created_at"

# Stages that can set ``error_stage``.
STAGE_SOURCE = "source"  # the list named a video that does not exist
STAGE_READ = "read"  # object store: permanent error or retries exhausted
STAGE_DECODE = "decode"  # the bytes are not a decodable video
STAGE_CAPTION = "caption"  # the model failed on this video
# A list row whose video_id an earlier row of the same run already has: never decoded, never written.
REASON_DUPLICATE = "duplicate"

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field(VIDEO_ID, pa.string(), nullable=False),
        pa.field(URI, pa.string(), nullable=False),
        pa.field(START_S, pa.float64()),
        pa.field(END_S, pa.float64()),
        pa.field(CAPTION, pa.string()),
        pa.field(ERROR, pa.string()),
        pa.field(ERROR_STAGE, pa.string()),
        pa.field(ERROR_REASON, pa.string()),
        pa.field(MODEL, pa.string()),
        pa.field(PROMPT_ID, pa.string()),
        pa.field(NUM_FRAMES, pa.int32()),
        pa.field(POOLING, pa.string()),
        pa.field(DURATION_S, pa.float64()),
        pa.field(FPS, pa.float64()),
        pa.field(WIDTH, pa.int32()),
        pa.field(HEIGHT, pa.int32()),
        pa.field(FRAME_COUNT, pa.int64()),
        pa.field(DECODER, pa.string()),
        pa.field(NUM_TOKENS, pa.int32()),
        pa.field(TRUNCATED, pa.bool_()),
        pa.field(FLAG_EMPTY, pa.bool_()),
        pa.field(FLAG_TRUNCATED, pa.bool_()),
        pa.field(FLAG_REPETITION, pa.bool_()),
        pa.field(FLAG_PROMPT_ECHO, pa.bool_()),
        pa.field(FLAG_SHORT, pa.bool_()),
        pa.field(REPEAT_RATIO, pa.float64()),
        pa.field(DECODE_S, pa.float64()),
        pa.field(DECODE_CPU_S, pa.float64()),
        pa.field(FRAME_INDICES, pa.list_(pa.int64())),
        pa.field(CAPTION_S, pa.float64()),
        pa.field(RUN_ID, pa.string()),
        pa.field(CREATED_AT, pa.timestamp("us", tz="UTC")),
    ]
)
OUTPUT_COLUMNS = tuple(OUTPUT_SCHEMA.names)
# Columns that exist only inside the pipeline.
INTERNAL_COLUMNS = (FRAMES, KEYFRAME_JPEG, READ_RETRIES)


def require_columns(columns, needed, stage: str) -> None:
    """Raises KeyError naming the missing columns when a stage gets a batch without what it needs."""
    missing = [c for c in needed if c not in columns]
    if missing:
        raise KeyError(f"{stage} needs columns {missing}; the batch has {sorted(columns)}")


def with_columns(table: pa.Table, columns: dict[str, tuple[pa.DataType, list]]) -> pa.Table:
    """``table`` with each named column set to ``(type, values)``: replaced where present, else appended."""
    for name, (kind, values) in columns.items():
        array = pa.array(values, kind)
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), pa.field(name, kind), array)
        else:
            table = table.append_column(pa.field(name, kind), array)
    return table


def error_columns(errors: list, stages: list, reasons: list) -> dict[str, tuple[pa.DataType, list]]:
    """The three error columns, for :func:`with_columns`."""
    return {ERROR: (pa.string(), errors), ERROR_STAGE: (pa.string(), stages), ERROR_REASON: (pa.string(), reasons)}


def extra_columns(columns) -> list[str]:
    """Input-list columns passed through unchanged (everything the pipeline does not own)."""
    return [c for c in columns if c not in OUTPUT_COLUMNS and c not in INTERNAL_COLUMNS]
