"""The files of an evaluation's output, owned in one place: their names, atomic writes and reads.

An evaluation's output is a recaption output (:class:`~pipeline.io.output_store.OutputStore`: ``parquet/`` holds
the model's answers, ``_runs/`` the run summaries) with three files of the evaluation's own::

    questions.parquet                 the question list the recaption job reads (its input)
    predictions/predictions.parquet   one scored row per question
    metrics.json                      per task and overall (:func:`pipeline.evaluation.run.metrics`)
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.masking import public_uri
from pipeline.io.output_store import OutputStore, write_parquet
from pipeline.io.storage import get_fs, join

QUESTIONS_FILE = "questions.parquet"
PREDICTIONS_FILE = "predictions/predictions.parquet"
METRICS_FILE = "metrics.json"


class EvaluationStore(OutputStore):
    """One evaluation's output: the recaption output's layout plus the question list, predictions and metrics."""

    # -- names -----------------------------------------------------------------------------------------
    def questions_uri(self) -> str:
        return join(self.uri, QUESTIONS_FILE)

    def predictions_uri(self) -> str:
        return join(self.uri, PREDICTIONS_FILE)

    def metrics_uri(self) -> str:
        return join(self.uri, METRICS_FILE)

    # -- writes (atomic: a reader sees the whole file or the one before) -------------------------------------
    def write_questions(self, questions: pa.Table) -> str:
        uri = self.questions_uri()
        write_parquet(uri, questions, self.storage_options)
        return uri

    def write_predictions(self, rows: pa.Table) -> str:
        uri = self.predictions_uri()
        write_parquet(uri, rows, self.storage_options)
        return uri

    def write_metrics(self, metrics: dict) -> str:
        return self.write_json(self.metrics_uri(), metrics)

    # -- reads -----------------------------------------------------------------------------------------
    def read_predictions(self) -> pa.Table | None:
        """The predictions an earlier scoring wrote, or None when there are none.

        Raises:
            OSError, pyarrow.ArrowException: the file is there but unreadable.
        """
        fs, path = get_fs(self.predictions_uri(), self.storage_options)
        if not fs.exists(path):
            return None
        with fs.open(path, "rb") as f:
            return pq.read_table(f)

    def read_metrics(self) -> Any:
        """What ``metrics.json`` holds (its shape is the caller's to check).

        Raises:
            FileNotFoundError: there is none. ValueError: it is not JSON (named, without credentials).
        """
        uri = self.metrics_uri()
        fs, path = get_fs(uri, self.storage_options)
        with fs.open(path, "r") as f:
            try:
                return json.load(f)
            except (ValueError, RecursionError) as exc:
                raise ValueError(f"{public_uri(uri)} is not JSON: {str(exc)[:200]}") from None


__all__ = ["EvaluationStore", "QUESTIONS_FILE", "PREDICTIONS_FILE", "METRICS_FILE"]
