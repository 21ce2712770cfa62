"""The SQLite results store: atomic writes, skipping, concurrent writers, exports, bad files."""

import csv
import json
import multiprocessing as mp
import os
import sqlite3

import pytest

from moelab.experiments.store import DB_NAME, ResultStore, StoreError


def _add(store, run_id, **kw):
    args = dict(run_id=run_id, experiment="exp", labels={"D": "16"}, seed=0,
                config={"a": 1}, test_mse=1e-3, test_sup=0.1, metrics={"test_mse": 1e-3},
                routing={"load": [[0.5, 0.5]]}, seconds=1.0,
                history=[{"step": 0, "loss": 1.0}, {"step": 10, "loss": 0.5}],
                evals=[{"step": 11, "test_mse": 1e-3, "test_sup": 0.1}])
    args.update(kw)
    return store.add(**args)


def test_add_and_read_back(tmp_path):
    store = ResultStore(tmp_path)
    assert _add(store, "r1")
    assert store.has("r1") and not store.has("r2")
    (run,) = store.runs("exp")
    assert run.labels == {"D": "16"} and run.routing == {"load": [[0.5, 0.5]]}
    assert [h["step"] for h in store.history("r1")] == [0, 10]
    assert store.evals("r1") == [{"step": 11, "test_mse": 1e-3, "test_sup": 0.1}]
    assert store.experiments() == ["exp"]


def test_second_add_of_the_same_run_changes_nothing(tmp_path):
    store = ResultStore(tmp_path)
    _add(store, "r1")
    assert not _add(store, "r1", test_mse=5.0)
    assert store.runs()[0].test_mse == 1e-3


def test_a_failing_write_leaves_no_partial_rows(tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(KeyError):
        _add(store, "r1", evals=[{"step": 1}])  # malformed eval row fails mid-transaction
    assert not store.has("r1") and store.history("r1") == []


def _writer(path, prefix, n):
    store = ResultStore(path)
    for i in range(n):
        _add(store, f"{prefix}{i}")


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    ResultStore(tmp_path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(tmp_path, p, 25)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(ResultStore(tmp_path).runs()) == 50


def test_exports(tmp_path):
    store = ResultStore(tmp_path)
    _add(store, "r1")
    _add(store, "r2", labels={"D": "32"})
    rows = list(csv.DictReader(store.export_csv(tmp_path / "out.csv").open()))
    assert [r["label.D"] for r in rows] == ["16", "32"] and rows[0]["config.a"] == "1"
    data = json.loads(store.export_json(tmp_path / "out.json").read_text())
    assert len(data) == 2 and data[0]["history"][1]["loss"] == 0.5


def test_json_export_is_each_run_with_sorted_keys_and_refuses_a_damaged_row(tmp_path):
    store = ResultStore(tmp_path)
    _add(store, "r1", history=[{"step": 0, "loss": 1.0, "lr": 0.1}, {"step": 1, "loss": 0.5,
                                                                     "lr": float("nan")}])
    _add(store, "r2", labels={"D": "32"})
    text = store.export_json(tmp_path / "out.json").read_text()
    want = [json.dumps({**run.__dict__, "history": store.history(run.run_id),
                        "evals": store.evals(run.run_id)}, sort_keys=True)
            for run in store.runs()]
    assert text == "[\n" + ",\n".join(want) + "\n]\n"
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute("UPDATE history SET row='{\"step\": 1, ' WHERE run_id='r1' AND step=1")
    conn.close()
    with pytest.raises(json.JSONDecodeError):
        store.export_json(tmp_path / "again.json")


def test_not_sqlite_is_a_clear_error_and_the_file_is_untouched(tmp_path):
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 10)
    before = (tmp_path / DB_NAME).read_bytes()
    with pytest.raises(StoreError, match="is not a moelab results database"):
        ResultStore(tmp_path)
    assert (tmp_path / DB_NAME).read_bytes() == before


def test_missing_database_when_not_creating(tmp_path):
    with pytest.raises(StoreError, match="no results database"):
        ResultStore(tmp_path / "nothing", create=False)



def _export_repeatedly(directory, path, kind, rounds):
    store = ResultStore(directory, create=False)
    for _ in range(rounds):
        (store.export_json if kind == "json" else store.export_csv)(path)


@pytest.mark.parametrize("kind", ["json", "csv"])
def test_concurrent_exports_to_one_path_never_tear_the_file(tmp_path, kind):
    store = ResultStore(tmp_path)
    history = [{"step": s, "loss": 1.0 / (s + 1)} for s in range(100)]
    for i in range(30):
        _add(store, f"r{i}", history=history)
    out = tmp_path / f"out.{kind}"
    expected = (store.export_json if kind == "json" else store.export_csv)(out).read_text()
    ctx = mp.get_context("spawn")
    writers = [ctx.Process(target=_export_repeatedly, args=(tmp_path, out, kind, 40))
               for _ in range(2)]
    for w in writers:
        w.start()
    torn = 0
    while any(w.is_alive() for w in writers):
        torn += out.read_text() != expected
    for w in writers:
        w.join(120)
        assert w.exitcode == 0  # the old fixed ".tmp" name made one writer's rename fail
    assert torn == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def _stored_db(directory):
    store = ResultStore(directory)
    for i in range(20):
        _add(store, f"r{i}", history=[{"step": s, "loss": 1.0} for s in range(50)])
    return directory / DB_NAME


def test_a_damaged_database_names_the_damage_not_a_foreign_file(tmp_path):
    db = _stored_db(tmp_path / "good")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    data = db.read_bytes()
    (damaged / DB_NAME).write_bytes(data[:len(data) // 2])  # a copy cut off half way
    before = (damaged / DB_NAME).read_bytes()
    for create in (True, False):
        with pytest.raises(StoreError, match=r"is damaged \(database disk image is malformed\)"):
            ResultStore(damaged, create=create)
    assert (damaged / DB_NAME).read_bytes() == before


def test_a_file_without_the_sqlite_header_is_named_as_such(tmp_path):
    (tmp_path / DB_NAME).write_bytes(b"x" * 100)
    with pytest.raises(StoreError, match="not an SQLite file at all"):
        ResultStore(tmp_path)


def test_a_directory_named_results_sqlite(tmp_path):
    (tmp_path / DB_NAME).mkdir()
    for create in (True, False):
        with pytest.raises(StoreError, match=r"results.sqlite is a directory"):
            ResultStore(tmp_path, create=create)


def test_a_regular_file_as_the_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match="is a regular file, not a directory"):
        ResultStore(tmp_path / "f")


def test_create_false_opens_read_only_and_reads(tmp_path):
    db = _stored_db(tmp_path)
    before = db.read_bytes()
    store = ResultStore(tmp_path, create=False)
    assert store.readonly and len(store.runs()) == 20 and len(store.history("r3")) == 50
    with pytest.raises(StoreError, match="opened read-only"):
        _add(store, "new")
    with pytest.raises(StoreError, match="cannot be written"), store._connect() as conn:
        conn.execute("DELETE FROM runs")  # refused by SQLite itself: the file is opened mode=ro
    assert db.read_bytes() == before
    with pytest.raises(ValueError, match="create=True needs a writable store"):
        ResultStore(tmp_path, readonly=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_read_only_permissions(tmp_path):
    db = _stored_db(tmp_path / "d")
    db.chmod(0o444)
    db.parent.chmod(0o555)
    try:
        assert len(ResultStore(db.parent, create=False).runs()) == 20
        with pytest.raises(StoreError, match="is read-only"):
            ResultStore(db.parent)
        with pytest.raises(StoreError, match="is not writable"):
            ResultStore(db.parent / "new")
    finally:
        db.parent.chmod(0o755)


def test_flatten_gives_dotted_paths_keeping_or_leaving_out_empty_mappings():
    from moelab.experiments.store import flatten

    config = {"train": {"steps": 5, "aux_weights": {}}, "task": {"D": 16}, "seed": 0}
    assert flatten(config) == {"train.steps": 5, "train.aux_weights": {}, "task.D": 16, "seed": 0}
    assert flatten(config, "config.", empty=False) == {"config.train.steps": 5,
                                                       "config.task.D": 16, "config.seed": 0}
