"""Streaming the training loop's logged rows as they are made: to TensorBoard and to JSON lines.

The results store keeps every run's history once the run has finished; a stream shows a run while
it trains, where researchers look for it. Both are off by default and chosen by two
:class:`~moelab.training.TrainConfig` fields:

* ``tensorboard_dir``: a folder for :class:`torch.utils.tensorboard.SummaryWriter` (needs the
  ``tensorboard`` package: ``pip install 'moelab[tensorboard]'``); every value of a row is a
  scalar tagged with its key (``loss``, ``lr``, ``layer0/max_vio``, ...) at the row's ``step``.
* ``jsonl_path``: a file with one JSON object per logged row, written from the start (a rerun of
  the run replaces it) and flushed after each row, so ``tail -f`` follows it. A value that is not
  finite (a metric of a layer that kept no assignment) is written as ``null``, so the file is
  strict JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import TracebackType
from typing import IO, Any

#: The :class:`~moelab.training.TrainConfig` fields that choose the streams: where a run's rows
#: go, not what the run computes, so they are left out of its identity (its run id).
STREAM_FIELDS = ("tensorboard_dir", "jsonl_path")


class MetricsStream:
    """The sinks a training run streams its logged rows to; a context manager that closes them.

    ``MetricsStream()`` streams nowhere; :meth:`of` opens what a config asks for.
    """

    def __init__(self, *, tensorboard_dir: str | Path | None = None,
                 jsonl_path: str | Path | None = None) -> None:
        for name, value in (("tensorboard_dir", tensorboard_dir), ("jsonl_path", jsonl_path)):
            if value is not None and not isinstance(value, (str, Path)):
                raise TypeError(f"{name} must be a path (str) or None, got "
                                f"{type(value).__name__} {value!r}")
        self._writer = _summary_writer(tensorboard_dir) if tensorboard_dir is not None else None
        self._jsonl: IO[str] | None = None
        if jsonl_path is not None:
            path = Path(jsonl_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._jsonl = path.open("w", encoding="utf-8")

    @classmethod
    def of(cls, config: Any) -> MetricsStream:
        """The stream a :class:`~moelab.training.TrainConfig` asks for."""
        return cls(tensorboard_dir=config.tensorboard_dir, jsonl_path=config.jsonl_path)

    def write(self, row: dict[str, float]) -> None:
        """Stream one logged row (it must hold ``step``)."""
        step = int(row["step"])
        if self._writer is not None:
            for key, value in row.items():
                if key != "step":
                    self._writer.add_scalar(key, value, global_step=step)
        if self._jsonl is not None:
            clean = {k: (v if math.isfinite(v) else None) for k, v in row.items()}
            self._jsonl.write(json.dumps(clean, allow_nan=False) + "\n")
            self._jsonl.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    def __enter__(self) -> MetricsStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _summary_writer(folder: str | Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch's module imports the tensorboard package
        raise ImportError(f"tensorboard_dir={str(folder)!r} needs the tensorboard package: "
                          "pip install 'moelab[tensorboard]'") from exc
    return SummaryWriter(log_dir=str(folder))
