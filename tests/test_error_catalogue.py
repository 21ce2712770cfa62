"""The bad-input catalogue of docs/errors.md, executed: every case raises the documented error with a
message naming what was wrong, and nothing already stored (results, checkpoints) changes.

The table in docs/errors.md and the CASES below must list the same case ids.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from moelab.analysis import intrinsic_dimension
from moelab.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from moelab.cli import main
from moelab.constructions import CONSTRUCTIONS
from moelab.experiments.config import RunConfig, apply_overrides, parse_override
from moelab.experiments.registry import get_experiment
from moelab.experiments.store import ResultStore, StoreError
from moelab.interop.hf_models import check_moe_config, load_model, random_model, token_ids
from moelab.layers import (
    DeepMoE,
    ExpertConfig,
    MoEConfig,
    MoELayer,
    RouterConfig,
    collect_aux_losses,
)
from moelab.tasks import build_real_data_task, make_manifold_task, make_piecewise_task
from moelab.training import TrainConfig, train

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[Path], object]  # receives a directory holding a stored run and a checkpoint
    error: type[BaseException]
    pattern: str


def _ones(model):
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(1.0)
    return model


def _layer():
    return MoELayer(4, 2, MoEConfig(num_experts=3))


def _x(*shape, value=None, dtype=torch.float32):
    x = torch.randn(*shape).to(dtype)
    if value is not None:
        x[0, 0] = value
    return x


def _sampler_4_2(n, gen):
    x = torch.rand(n, 4, generator=gen)
    return x, x[:, :2]


def _wide_targets(n, gen):
    return torch.rand(n, 4, generator=gen), torch.zeros(n, 3)


def _numpy_sampler(n, gen):
    x = torch.rand(n, 4, generator=gen)
    return x.numpy(), x[:, :2].numpy()


def _train_on(sampler, **config):
    return train(_layer(), sampler, TrainConfig(steps=1, test_size=8, **config), progress=False)


def _cli(argv):
    def call(_):
        if main(argv) != 2:
            raise AssertionError("the CLI did not fail")
        raise SystemExit("cli-error")
    return call


def _corrupt(name, mutate):
    def call(d: Path):
        ck = d / "ck_copy"
        ck.mkdir(exist_ok=True)
        for f in (d / "ck").iterdir():
            (ck / f.name).write_bytes(f.read_bytes())
        mutate(ck / name)
        return load_checkpoint(ck)
    return call


def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[:-100])


def _flip(p: Path):
    b = bytearray(p.read_bytes())
    b[-10] ^= 0xFF
    p.write_bytes(bytes(b))


def _foreign_db(d: Path):
    other = d / "foreign"
    other.mkdir(exist_ok=True)
    conn = sqlite3.connect(other / "results.sqlite")
    conn.execute("CREATE TABLE IF NOT EXISTS notes(a)")
    conn.commit()
    conn.close()
    return ResultStore(other)


def _not_sqlite(d: Path):
    other = d / "garbage"
    other.mkdir(exist_ok=True)
    (other / "results.sqlite").write_bytes(b"not a database at all" * 20)
    return ResultStore(other)


def _diverge(_):
    def sampler(n, gen):
        return torch.rand(n, 4, generator=gen), torch.full((n, 2), float("nan"))
    return train(_layer(), sampler, TrainConfig(steps=2, test_size=4), progress=False)


CASES = [
    # layers
    Case("layer-trailing-dim", lambda d: _layer()(_x(3, 5)), ValueError,
         r"x must have shape \(\.\.\., 4\), got \(3, 5\)"),
    Case("layer-int-dtype", lambda d: _layer()(torch.ones(3, 4, dtype=torch.long)), TypeError,
         r"x must have a floating dtype, got torch.int64"),
    Case("layer-nan", lambda d: _layer()(_x(3, 4, value=float("nan"))), ValueError,
         r"x contains 1 non-finite value"),
    Case("layer-inf", lambda d: _layer()(_x(3, 4, value=float("inf"))), ValueError,
         r"x contains 1 non-finite value"),
    Case("layer-not-tensor", lambda d: _layer()([[1.0] * 4]), TypeError,
         r"x must be a torch.Tensor, got list"),
    Case("config-k-gt-e", lambda d: MoEConfig(num_experts=4, top_k=5), ValueError,
         r"top_k=5 must be <= num_experts=4"),
    Case("config-k-zero", lambda d: MoEConfig(top_k=0), ValueError, r"top_k must be >= 1, got 0"),
    Case("config-e-zero", lambda d: MoEConfig(num_experts=0), ValueError,
         r"num_experts must be >= 1, got 0"),
    Case("config-width", lambda d: MoEConfig(expert_hidden=-3), ValueError,
         r"expert_hidden must be >= 1, got -3"),
    Case("config-depth", lambda d: MoEConfig(expert_depth=0), ValueError,
         r"expert_depth must be >= 1, got 0"),
    Case("config-router", lambda d: MoEConfig(router="attention"), ValueError,
         r"router='attention' is unknown; expected one of \['linear', 'mlp'\]"),
    Case("config-weighting", lambda d: MoEConfig(weighting="softmax"), ValueError,
         r"weighting='softmax' is unknown; expected one of"),
    Case("config-groups", lambda d: MoEConfig(num_experts=6, router=RouterConfig(groups=4)),
         ValueError, r"router.groups=4 must divide num_experts=6"),
    Case("config-top-groups", lambda d: MoEConfig(
        num_experts=8, router=RouterConfig(top_k=3, groups=4, top_groups=1)), ValueError,
         r"router.top_k=3 must be <= router.top_groups \* num_experts / router.groups"),
    Case("config-clamped-ungated", lambda d: ExpertConfig(gated_form="clamped"), ValueError,
         r"experts.gated_form='clamped' shapes the gated unit and needs experts.gated=True"),
    Case("config-shared-gate", lambda d: MoEConfig(shared_gate=True), ValueError,
         r"shared_gate=True shapes the shared expert and needs shared_experts >= 1"),
    Case("config-activation", lambda d: MoEConfig(activation="swish"), ValueError,
         r"activation='swish' is unknown; expected one of"),
    Case("stack-widths", lambda d: DeepMoE([3, 0, 1]), ValueError,
         r"widths\[1\] must be >= 1, got 0"),
    # tasks
    Case("task-d-ge-D", lambda d: make_manifold_task("sphere", 10, D=3, d=3), ValueError,
         r"D=3 must exceed the intrinsic dimension d=3"),
    Case("task-manifold", lambda d: make_manifold_task("klein", 10, D=4), ValueError,
         r"manifold='klein' is unknown"),
    Case("task-n", lambda d: make_manifold_task("circle", 0, D=4), ValueError,
         r"n must be >= 1, got 0"),
    Case("task-E", lambda d: make_piecewise_task(10, E=0, L=2), ValueError,
         r"E must be >= 1, got 0"),
    Case("task-L", lambda d: make_piecewise_task(10, E=3, L=0), ValueError,
         r"L must be >= 1, got 0"),
    Case("task-noise", lambda d: make_manifold_task("circle", 10, D=4, noise=-1.0), ValueError,
         r"noise must be a finite number >= 0, got -1.0"),
    Case("task-dataset", lambda d: build_real_data_task("mnist"), ValueError,
         r"dataset='mnist' is unknown"),
    Case("task-real-D", lambda d: build_real_data_task("digits", D=32), ValueError,
         r"D=32 is below the native width 64"),
    # constructions
    Case("construct-m", lambda d: CONSTRUCTIONS["thm5.3"](m=0), ValueError,
         r"m must be >= 1, got 0"),
    Case("construct-manifold", lambda d: CONSTRUCTIONS["cor4.9"](manifold="klein"), ValueError,
         r"manifold='klein' is unknown"),
    Case("construct-D", lambda d: CONSTRUCTIONS["cor4.9"](D=1), ValueError,
         r"D=1 must exceed the intrinsic dimension d=1"),
    # config overrides and the CLI
    Case("override-unknown-key", lambda d: apply_overrides(RunConfig(experiment="x"),
                                                            {"train.stepz": 3}),
         ValueError, r"unknown config key 'train.stepz'"),
    Case("override-wrong-type", lambda d: apply_overrides(RunConfig(experiment="x"),
                                                           {"train.steps": "many"}),
         TypeError, r"train.steps must be int, got 'many'"),
    Case("override-range", lambda d: apply_overrides(RunConfig(experiment="x"),
                                                      {"train.steps": 0}),
         ValueError, r"steps must be >= 1, got 0"),
    Case("override-malformed", lambda d: parse_override("train.steps"), ValueError,
         r"override 'train.steps' must have the form key=value"),
    Case("config-unknown-field", lambda d: RunConfig.from_dict({"experiment": "x", "tain": {}}),
         ValueError, r"unknown config key\(s\) \['tain'\]"),
    Case("experiment-unknown", lambda d: get_experiment("table5"), ValueError,
         r"unknown experiment 'table5'"),
    Case("cli-run-bad-set", _cli(["run", "table3", "--set", "train.lr=fast", "--out", "/tmp/x"]),
         SystemExit, "cli-error"),
    Case("cli-report-no-db", _cli(["report", "/nonexistent/moelab"]), SystemExit, "cli-error"),
    Case("cli-construct-unknown", _cli(["construct", "thm9"]), SystemExit, "cli-error"),
    # training
    Case("train-optimizer", lambda d: TrainConfig(optimizer="lbfgs"), ValueError,
         r"optimizer='lbfgs' is unknown"),
    Case("train-aux-name", lambda d: TrainConfig(aux_weights={"balance": 1.0}), ValueError,
         r"aux_weights key='balance' is unknown"),
    Case("train-diverges", _diverge, FloatingPointError, r"training loss became nan at step 0"),
    # checkpoints
    Case("checkpoint-missing", lambda d: load_checkpoint(d / "nothing"), CheckpointError,
         r"nothing"),
    Case("checkpoint-truncated", _corrupt("model.safetensors", _truncate), CheckpointError,
         r"model.safetensors"),
    Case("checkpoint-tampered", _corrupt("model.safetensors", _flip), CheckpointError,
         r"model.safetensors"),
    Case("checkpoint-bad-json", _corrupt("config.json", lambda p: p.write_text("{not json")),
         CheckpointError, r"config.json"),
    Case("checkpoint-wrong-width",
         _corrupt("config.json", lambda p: p.write_text(p.read_text().replace('"d_in": 4',
                                                                              '"d_in": 5'))),
         CheckpointError, r"config.json"),
    # results store
    Case("store-not-sqlite", _not_sqlite, StoreError, r"is not a moelab results database"),
    Case("store-foreign-sqlite", _foreign_db, StoreError,
         r"is an SQLite database but not a moelab results database"),
    Case("store-missing", lambda d: ResultStore(d / "none", create=False), StoreError,
         r"no results database"),
    Case("task-subfunction-shape",
         lambda _: make_piecewise_task(10, E=2, L=1, subfunctions=[[torch.atleast_2d] * 2], seed=0),
         ValueError, r"subfunctions\[0\]\[0\]=atleast_2d must return one value per point, "
         r"shape \(4,\) for 4 points, got shape \(1, 4\)"),
    Case("task-piece-id-overflow", lambda _: make_piecewise_task(3, E=100, L=20, seed=0).piece_id,
         ValueError, r"E=100 pieces per coordinate and L=20 coordinates make E\^L = 1e\+40 pieces, "
         r"more than int64 piece ids can number \(at most 2\^63"),
    Case("intrinsic-twonn-k", lambda _: intrinsic_dimension(torch.rand(50, 2), "twonn", k=5),
         ValueError, r"k=5 applies to the MLE methods; method='twonn' uses the two nearest neighbours"),
    # interop (none of these needs transformers installed)
    Case("hf-missing-dir", lambda d: load_model(d / "nowhere"), ValueError,
         r"model directory '.*nowhere' does not exist"),
    Case("hf-no-config", lambda d: load_model(d), ValueError, r"has no config.json"),
    Case("hf-not-moe", lambda _: check_moe_config(SimpleNamespace(model_type="llama")), ValueError,
         r"model_type='llama' is not a mixture-of-experts model"),
    Case("hf-unsupported-moe",
         lambda _: check_moe_config(SimpleNamespace(model_type="jamba", num_experts=16)), ValueError,
         r"model_type='jamba' is an MoE architecture that is not supported"),
    Case("hf-unknown-arch", lambda _: random_model("mixtrl"), ValueError, r"arch='mixtrl' is unknown"),
    Case("hf-empty-text", lambda _: token_ids(" \n", None, None, max_tokens=5), ValueError,
         r"text must hold some non-whitespace characters"),
    Case("store-damaged", lambda d: _damaged_db(d), StoreError,
         r"is damaged \(database disk image is malformed\)"),
    Case("store-directory-as-db", lambda d: _directory_as_db(d), StoreError,
         r"results.sqlite is a directory"),
    Case("store-file-as-directory", lambda d: _file_as_directory(d), StoreError,
         r"is a regular file, not a directory"),
    Case("store-read-only-add", lambda d: _add_read_only(d), StoreError, r"opened read-only"),
    Case("override-non-finite", lambda d: parse_override("train.lr=nan"), ValueError,
         r"train.lr=nan is refused: 'nan' is not a finite number"),
    Case("run-all-workers", lambda d: _run_all_workers(d), ValueError,
         r"workers must be >= 1, got 0"),
    Case("construction-args-m", lambda d: _construction_args_m(), ValueError,
         r"construction.args must not hold 'm' or 'seed'"),
    Case("cli-run-workers", _cli(["run", "table3", "--workers", "0", "--out", "/tmp/x"]),
         SystemExit, "cli-error"),
    Case("cli-run-out-file", lambda d: _cli(["run", "table3", "--out", str(_a_file(d))])(d),
         SystemExit, "cli-error"),
    Case("cli-run-seeds", _cli(["run", "table3", "--seeds", "3,3", "--out", "/tmp/x"]),
         SystemExit, "cli-error"),
    Case("cli-construct-bad-key", _cli(["construct", "thm5.3", "--set", "M=8"]), SystemExit,
         "cli-error"),
    Case("cli-construct-set-and-sweep",
         _cli(["construct", "thm5.3", "--set", "m=8", "--sweep", "m=4,8"]), SystemExit,
         "cli-error"),
    Case("cli-construct-two-sweeps",
         _cli(["construct", "thm5.3", "--sweep", "m=4,8", "--sweep", "E=2,3"]), SystemExit,
         "cli-error"),
    Case("layer-dtype", lambda d: _layer()(_x(3, 4, dtype=torch.float64)), TypeError,
         r"x has dtype torch.float64 but the layer's parameters are torch.float32"),
    Case("layer-device", lambda d: _layer()(torch.randn(3, 4, device="meta")), ValueError,
         r"x is on device meta but the layer's parameters are on cpu"),
    Case("config-unknown-layer-field", lambda d: MoEConfig(expert_width=3), TypeError,
         r"MoEConfig got unexpected keyword argument\(s\) \['expert_width'\]"),
    Case("layer-collect-aux", lambda d: collect_aux_losses(_layer()), RuntimeError,
         r"Record the forward pass instead: `with moelab.layers.record_routing"),
    Case("train-target-shape", lambda d: _train_on(_wide_targets), ValueError,
         r"the model's output has shape \(128, 2\) but the sampler's targets have shape \(128, 3\)"),
    Case("train-numpy-sampler", lambda d: _train_on(_numpy_sampler), TypeError,
         r"the sampler returned \(ndarray, ndarray\), not a pair \(x, y\) of torch tensors"),
    Case("train-aux-missing",
         lambda d: _train_on(_sampler_4_2, aux_weights={"reconstruction": 0.1}), ValueError,
         r"aux_weights\['reconstruction'\]=0.1 but the model produces no 'reconstruction' loss"),
    Case("layer-overflow", lambda d: _ones(_layer())(_x(3, 4).fill_(3e38)), FloatingPointError,
         r"output is not finite although the input is"),
    Case("layer-latent-wide",
         lambda d: MoELayer(4, 2, MoEConfig(num_experts=3, experts=ExpertConfig(latent_dim=8))),
         ValueError, r"experts.latent_dim=8 must be <= d_in=4"),
    Case("experts-unknown-bank", lambda d: ExpertConfig(bank="no_such_kind"), ValueError,
         r"experts.bank='no_such_kind' is unknown; expected one of \['ffn', 'lowdim'"),
    Case("experts-unknown-option", lambda d: ExpertConfig(options={"rank": 4}), ValueError,
         r"experts.options has unknown key\(s\) \['rank'\] for experts.bank='ffn'; known: \[\]"),
]


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A directory with one stored run and one checkpoint, whose bytes must never change."""
    d = tmp_path_factory.mktemp("stored")
    store = ResultStore(d)
    store.add(run_id="r", experiment="e", labels={}, seed=0, config={}, test_mse=1.0,
              test_sup=1.0, metrics={}, routing={}, seconds=0.0, history=[], evals=[])
    torch.manual_seed(0)
    save_checkpoint(_layer(), d / "ck")
    return d


def _fingerprint(d: Path) -> dict[str, str]:
    files = [d / "results.sqlite", *sorted((d / "ck").iterdir())]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _documented_messages() -> dict[str, str]:
    """Case id -> the message column of its row in docs/errors.md."""
    # The last column; an escaped pipe (\\|) inside it is text, not a column separator.
    rows = re.findall(r"^\| `([A-Za-z0-9.-]+)` \|.*?\| ((?:[^|\\]|\\.)*) \|$", DOC.read_text(),
                      flags=re.M)
    return dict(rows)


def _matches_doc(documented: str, actual: str, directory: Path) -> bool:
    """The documented message is the actual one, with ``DIR`` for the directory given, ``<...>``
    for a part that varies (a hash) and ``...`` where the doc shortens it."""
    documented = documented.replace("\\|", "|").strip()
    actual = actual.replace(str(directory), "DIR").strip()
    parts = re.split(r"<[^<>]+>|\.\.\.", documented)
    pattern = ".*?".join(re.escape(part) for part in parts)
    return re.fullmatch(r"(?:moelab: error: )?" + pattern, actual, flags=re.S) is not None


# The cases written in the deprecated flat MoEConfig spelling (their documented messages name the
# flat argument): each must also warn that the spelling is deprecated.
FLAT_SPELLING = {"config-k-gt-e", "config-k-zero", "config-width", "config-depth", "config-router",
                 "config-weighting", "config-activation"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case, stored, capsys):
    before = _fingerprint(stored)
    flat = (pytest.warns(DeprecationWarning, match="flat spelling") if case.id in FLAT_SPELLING
            else contextlib.nullcontext())
    with flat, pytest.raises(case.error, match=case.pattern) as excinfo:
        case.call(stored)
    assert _fingerprint(stored) == before
    actual = str(excinfo.value)
    if case.id.startswith("cli-"):
        err = capsys.readouterr().err
        assert err.startswith("moelab: error: ") and len(err.strip()) > len("moelab: error: ")
        actual = err
    documented = _documented_messages()[case.id]
    assert _matches_doc(documented, actual, stored), (
        f"docs/errors.md documents {documented!r} for {case.id}, the error says {actual!r}")


def test_catalogue_document_lists_exactly_these_cases():
    ids = re.findall(r"^\| `([A-Za-z0-9.-]+)` \|", DOC.read_text(), flags=re.M)
    assert sorted(ids) == sorted(c.id for c in CASES)
    assert len(ids) >= 30


# -- helpers of the cases appended last (looked up when a case runs) ---------------------------------

def _damaged_db(d: Path):
    other = d / "damaged"
    other.mkdir(exist_ok=True)
    data = (d / "results.sqlite").read_bytes()
    (other / "results.sqlite").write_bytes(data[: len(data) // 2])
    return ResultStore(other)


def _directory_as_db(d: Path):
    other = d / "dir_as_db"
    (other / "results.sqlite").mkdir(parents=True, exist_ok=True)
    return ResultStore(other)


def _a_file(d: Path) -> Path:
    f = d / "a_file"
    f.write_text("not a directory")
    return f


def _file_as_directory(d: Path):
    return ResultStore(_a_file(d))


def _add_read_only(d: Path):
    ResultStore(d, create=False).add(run_id="new", experiment="e", labels={}, seed=0, config={},
                                     test_mse=1.0, test_sup=1.0, metrics={}, routing={},
                                     seconds=0.0, history=[], evals=[])


def _run_all_workers(d: Path):
    from moelab.experiments.schedule import run_all

    return run_all([], ResultStore(d, create=False), workers=0)


def _construction_args_m():
    from moelab.experiments.config import ConstructionSpec

    return ConstructionSpec(args={"m": 3})
