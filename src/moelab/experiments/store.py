"""The results store: one SQLite database per output directory (standard-library ``sqlite3``).

Tables:
  runs(run_id PK, experiment, labels JSON, seed, config JSON, test_mse, test_sup, metrics JSON,
       routing JSON, seconds, version, finished_at)
  history(run_id, step, row JSON)          per-step training history
  evals(run_id, step, test_mse, test_sup)  periodic test evaluations

A run's rows are written in one transaction when the run has finished, so a killed run leaves
nothing behind and is simply run again; finished runs are skipped by :meth:`ResultStore.has`.
The database uses WAL journaling and a busy timeout, so several processes may write at once.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moelab import __version__
from moelab.atomic import atomic_write

DB_NAME = "results.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    labels TEXT NOT NULL,
    seed INTEGER NOT NULL,
    config TEXT NOT NULL,
    test_mse REAL,
    test_sup REAL,
    metrics TEXT NOT NULL,
    routing TEXT NOT NULL,
    seconds REAL NOT NULL,
    version TEXT NOT NULL,
    finished_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    step INTEGER NOT NULL,
    row TEXT NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS evals (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    step INTEGER NOT NULL,
    test_mse REAL,
    test_sup REAL,
    PRIMARY KEY (run_id, step)
);
CREATE INDEX IF NOT EXISTS runs_by_experiment ON runs(experiment);
"""


class StoreError(ValueError):
    """The results database cannot be used: missing, unreadable, read-only where a write is needed,
    damaged, not SQLite, or not a moelab results database. The message names the cause."""


@dataclass(frozen=True)
class StoredRun:
    """One finished run as stored."""

    run_id: str
    experiment: str
    labels: dict[str, str]
    seed: int
    config: dict[str, Any]
    test_mse: float
    test_sup: float
    metrics: dict[str, Any]
    routing: dict[str, Any]
    seconds: float
    version: str
    finished_at: str


class ResultStore:
    """Results of experiment runs in ``directory/results.sqlite``.

    ``create=True`` (for running) creates the directory and database if needed and opens it for
    writing. ``create=False`` (for reports and exports) opens an existing database read-only
    (SQLite's ``mode=ro``): nothing on disk is created or changed, so a database the user may not
    write to can still be read; :meth:`add` then raises :class:`StoreError`. ``readonly`` overrides
    that choice (``readonly=False`` with ``create=False``: write to an existing database only).
    """

    def __init__(self, directory: str | Path, *, create: bool = True,
                 readonly: bool | None = None) -> None:
        self.directory = Path(directory)
        self.path = self.directory / DB_NAME
        self.readonly = (not create) if readonly is None else bool(readonly)
        if self.readonly and create:
            raise ValueError("ResultStore: create=True needs a writable store, got readonly=True")
        self._check_location(create)
        if self.path.exists() and self.path.stat().st_size > 0:
            self._check_existing()  # read-only: a foreign file is never modified
        if self.readonly:
            with self._connect() as conn:
                schema = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        else:
            with self._connect() as conn, conn:
                conn.executescript(_SCHEMA)
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                             (str(SCHEMA_VERSION),))
                schema = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if schema is None or schema[0] != str(SCHEMA_VERSION):
            raise StoreError(f"{self.path} has results schema {schema and schema[0]!r}; "
                             f"this moelab reads schema {SCHEMA_VERSION}")

    def _check_location(self, create: bool) -> None:
        """Raise StoreError naming the cause if the directory or file cannot be used as asked."""
        if self.directory.exists() and not self.directory.is_dir():
            raise StoreError(f"{self.directory} is a regular file, not a directory; results go to "
                             f"DIRECTORY/{DB_NAME}, so give a directory")
        if self.path.exists() and not self.path.is_file():
            raise StoreError(f"{self.path} is a directory (or another non-file), not a results "
                             "database; move it away or choose another output directory")
        if not self.path.exists():
            if not create:
                raise StoreError(f"no results database at {self.path}")
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the results directory {self.directory}: "
                                 f"{exc.strerror}") from None
            if not os.access(self.directory, os.W_OK):
                raise StoreError(f"cannot create {self.path}: the directory {self.directory} is "
                                 "not writable (permission denied)")
            return
        if not os.access(self.path, os.R_OK):
            raise StoreError(f"{self.path} is not readable (permission denied)")
        if self.readonly:
            return
        if not os.access(self.path, os.W_OK):
            raise StoreError(f"{self.path} is read-only (permission denied) and running needs to "
                             "write to it; `moelab report` and `moelab export` can read it")
        if not os.access(self.directory, os.W_OK):
            raise StoreError(f"the directory {self.directory} is not writable (permission denied), "
                             f"and SQLite writes its journal beside {self.path}; "
                             "`moelab report` and `moelab export` can read it")

    def _check_existing(self) -> None:
        """Raise StoreError unless the existing file is a moelab results database."""
        # Only SQLite opens the file: closing another descriptor of it would drop SQLite's locks.
        with self._connect(readonly=True) as conn:
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"meta", "runs", "history", "evals"} <= tables:
            raise StoreError(f"{self.path} is an SQLite database but not a moelab results "
                             f"database (tables: {sorted(tables)})")

    @contextmanager
    def _connect(self, *, readonly: bool | None = None) -> Iterator[sqlite3.Connection]:
        """A connection (read-only if the store is); SQLite errors become StoreErrors that name
        the file and the cause."""
        readonly = self.readonly if readonly is None else readonly
        try:
            conn = _open_readonly(self.path) if readonly else sqlite3.connect(self.path,
                                                                               timeout=60.0)
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None
        try:
            if not readonly:
                conn.execute("PRAGMA busy_timeout = 60000")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA foreign_keys = ON")
            yield conn
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None
        finally:
            conn.close()

    def _error(self, exc: sqlite3.DatabaseError) -> StoreError:
        text = str(exc)
        if "file is not a database" in text:  # SQLITE_NOTADB: no SQLite header
            return StoreError(f"{self.path} is not a moelab results database: it is not an SQLite "
                              f"file at all ({text}); it was left untouched")
        if "malformed" in text or "corrupt" in text:  # SQLITE_CORRUPT
            return StoreError(f"{self.path} is damaged ({text}): its SQLite pages cannot be read; "
                              "it was left untouched — restore it from a copy, or move it away "
                              "and rerun")
        if "readonly" in text or "read-only" in text:
            return StoreError(f"{self.path} cannot be written ({text})")
        return StoreError(f"cannot use {self.path}: {text}")

    # -- writing ------------------------------------------------------------------------------
    def add(self, *, run_id: str, experiment: str, labels: dict[str, str], seed: int,
            config: dict[str, Any], test_mse: float, test_sup: float, metrics: dict[str, Any],
            routing: dict[str, Any], seconds: float, history: list[dict[str, float]],
            evals: list[dict[str, float]]) -> bool:
        """Store a finished run atomically; returns False (and changes nothing) if already stored."""
        if self.readonly:
            raise StoreError(f"{self.path} was opened read-only; open it with create=True to add "
                             "runs")
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        with self._connect() as conn:
            try:
                with conn:  # one transaction: all rows or none
                    conn.execute(
                        "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        (run_id, experiment, json.dumps(labels, sort_keys=True), seed,
                         json.dumps(config, sort_keys=True), test_mse, test_sup,
                         json.dumps(metrics, sort_keys=True), json.dumps(routing, sort_keys=True),
                         seconds, __version__, now),
                    )
                    conn.executemany(
                        "INSERT INTO history VALUES (?,?,?)",
                        [(run_id, int(r["step"]), json.dumps(r, sort_keys=True)) for r in history],
                    )
                    conn.executemany(
                        "INSERT INTO evals VALUES (?,?,?,?)",
                        [(run_id, int(e["step"]), e["test_mse"], e["test_sup"]) for e in evals],
                    )
            except sqlite3.IntegrityError:
                return False
        return True

    # -- reading ------------------------------------------------------------------------------
    def has(self, run_id: str) -> bool:
        with self._connect() as conn:
            return conn.execute("SELECT 1 FROM runs WHERE run_id=?", (run_id,)).fetchone() is not None

    def experiments(self) -> list[str]:
        with self._connect() as conn:
            rows = conn.execute("SELECT DISTINCT experiment FROM runs ORDER BY experiment")
            return [r[0] for r in rows]

    def runs(self, experiment: str | None = None) -> list[StoredRun]:
        query = "SELECT * FROM runs"
        args: tuple = ()
        if experiment is not None:
            query += " WHERE experiment=?"
            args = (experiment,)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY experiment, finished_at, run_id", args).fetchall()
        return [_stored(r) for r in rows]

    def history(self, run_id: str) -> list[dict[str, float]]:
        return [json.loads(row) for row in self._history_text(run_id).get(run_id, [])]

    def evals(self, run_id: str) -> list[dict[str, float]]:
        return self._evals(run_id).get(run_id, [])

    def _history_text(self, run_id: str | None = None) -> dict[str, list[str]]:
        """The stored history rows (JSON text) of ``run_id``, or of every run, by run, in order."""
        return {rid: [row for (row,) in rows]
                for rid, rows in self._by_run("SELECT run_id, row FROM history", run_id).items()}

    def _evals(self, run_id: str | None = None) -> dict[str, list[dict[str, float]]]:
        """The evaluations of ``run_id``, or of every run, by run, in order."""
        query = "SELECT run_id, step, test_mse, test_sup FROM evals"
        return {rid: [{"step": s, "test_mse": m, "test_sup": u} for s, m, u in rows]
                for rid, rows in self._by_run(query, run_id).items()}

    def _by_run(self, query: str, run_id: str | None) -> dict[str, list[tuple]]:
        """The rows of ``query`` (run_id first, then the columns wanted), for ``run_id`` or for every
        run, grouped by run in step order."""
        where, args = (" WHERE run_id=?", (run_id,)) if run_id is not None else ("", ())
        grouped: dict[str, list[tuple]] = {}
        with self._connect() as conn:
            for rid, *columns in conn.execute(f"{query}{where} ORDER BY run_id, step", args):
                grouped.setdefault(rid, []).append(tuple(columns))
        return grouped

    # -- export -------------------------------------------------------------------------------
    def export_json(self, path: str | Path) -> Path:
        """All runs (with their histories and evaluations) as one JSON document: a list with one
        run a line, each run an object with sorted keys (compact, so the C encoder writes it: an
        indented document of a reproduce's histories took seconds in the pure-Python one).

        History rows are stored as JSON objects with sorted keys, the form this document gives
        them, so their text is copied as it is (each row is still parsed, so a damaged row is an
        error, not a broken document): decoding and re-encoding a reproduce's 80,000 rows took
        most of the export's time."""
        history, evals = self._history_text(), self._evals()
        lines = []
        for run in self.runs():
            fields = {k: json.dumps(v, sort_keys=True) for k, v in run.__dict__.items()}
            fields["evals"] = json.dumps(evals.get(run.run_id, []), sort_keys=True)
            fields["history"] = "[" + ", ".join(history.get(run.run_id, [])) + "]"
            json.loads(fields["history"])  # each row is checked to be JSON
            lines.append("{" + ", ".join(f"{json.dumps(k)}: {fields[k]}" for k in sorted(fields))
                         + "}")
        return atomic_write(path, "[\n" + ",\n".join(lines) + "\n]\n")

    def export_csv(self, path: str | Path) -> Path:
        """One row per run: identity, labels, seed, final metrics and the flattened config."""
        runs = self.runs()
        flat = [_flatten_run(r) for r in runs]
        columns: list[str] = []
        for row in flat:
            columns.extend(k for k in row if k not in columns)
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        writer.writerows(flat)
        return atomic_write(path, text.getvalue())


def _stored(row: tuple) -> StoredRun:
    (run_id, experiment, labels, seed, config, mse, sup, metrics, routing, seconds, version,
     finished) = row
    return StoredRun(run_id, experiment, json.loads(labels), seed, json.loads(config), mse, sup,
                     json.loads(metrics), json.loads(routing), seconds, version, finished)


def flatten(config: Mapping[str, Any], prefix: str = "", *, empty: bool = True) -> dict[str, Any]:
    """A nested config as ``{"train.steps": 5000, ...}`` (dotted paths, after ``prefix``, to leaf
    values). An empty mapping is a leaf value of its own, or with ``empty=False`` left out (a CSV
    column of ``{}`` says nothing)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and (value or not empty):
            out.update(flatten(value, f"{prefix}{key}.", empty=empty))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _flatten_run(run: StoredRun) -> dict[str, Any]:
    metrics = {k: v for k, v in run.metrics.items() if not isinstance(v, (list, dict))}
    return {"run_id": run.run_id, "experiment": run.experiment, "seed": run.seed,
            "test_mse": run.test_mse, "test_sup": run.test_sup, "seconds": run.seconds,
            "version": run.version, **flatten(run.labels, "label.", empty=False),
            **flatten(metrics, "metric.", empty=False),
            **flatten(run.config, "config.", empty=False)}



def _open_readonly(path: Path) -> sqlite3.Connection:
    """Open ``path`` with SQLite's ``mode=ro``. A WAL database in a directory the user cannot
    write has no shared-memory file to open, and SQLite refuses it; since nobody can be writing
    there, it is then opened as immutable."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=60.0)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        conn.close()
        if os.access(path.parent, os.W_OK):
            raise
        conn = sqlite3.connect(f"{uri}&immutable=1", uri=True, timeout=60.0)
    return conn
