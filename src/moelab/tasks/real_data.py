"""Classification data sets that ship with scikit-learn, embedded isometrically into R^D (Sec. 4 on
real data).

Thm 4.8 says a shallow MoE's error is set by the intrinsic dimension d of the data, not by the
ambient D. Real data with a small d test that beyond the synthetic manifolds: a data set with native
width k (its number of features) is put into R^D, D >= k, by a map that keeps every distance, so the
data's geometry (and d) is the same at every D and only the ambient dimension grows.

Data sets (:data:`DATASETS`), all read from the files inside the scikit-learn wheel, never
downloaded (install with ``pip install 'moelab[data]'``):

* ``"digits"``: 1797 images of handwritten digits, 8 x 8 pixels (k = 64), 10 classes; its intrinsic
  dimension is about 7-9 by nearest-neighbour estimates.
* ``"wine"``: 178 wines, 13 chemical measurements, 3 cultivars.
* ``"breast_cancer"``: 569 tumours, 30 features of cell nuclei, 2 classes (malignant, benign).

All three are copies of UCI Machine Learning Repository data sets (Alpaydin & Kaynak 1998; Forina
et al. 1991; Wolberg, Street & Mangasarian 1995), which the repository distributes under CC BY 4.0
(attribution); scikit-learn itself is BSD-3-Clause.

The task: features standardised with the mean and standard deviation of the training split (a
constant feature is only centred), a stratified train/test split fixed by ``split_seed``, the
embedding x = P z with P (D, k) orthonormal columns, and one-hot targets (the squared loss of the
training loop then fits class indicators; the predicted class is the argmax). The ground-truth
region of a point is its class. As a sampler the task draws points of the *training* split only,
uniformly with replacement; :meth:`RealDataTask.test_set` is the held-out split, in a fixed order,
which is what a model must be evaluated on.

The embedding is ``"isometry"`` by default: a random P, Haar distributed given the seed, so the data
lie in no coordinate subspace and every input unit sees a mixture of all features. ``"pad"``
(P = [I_k; 0]) is also an isometry, but it leaves the data on the first k axes: a network then only
has to ignore D - k inputs that are always zero, and per-coordinate optimisers (Adam) treat the
padded problem exactly like the native one up to the initial weight scale, so it hardly tests D.

Shape legend: N points in the data set, n samples, k native width, D embedding dim, C classes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from moelab._validation import one_of, positive_float, positive_int
from moelab.tasks._common import as_float64, check_dtype, resolve_generator
from moelab.tasks.base import Sampling
from moelab.tasks.manifolds import EMBEDDINGS, embedding_matrix

DATASETS = ("digits", "wine", "breast_cancer")
_LOADERS = {"digits": "load_digits", "wine": "load_wine", "breast_cancer": "load_breast_cancer"}
#: Distance, relative to the largest point norm, within which a point counts as a data set point.
_MATCH_TOL = 1e-4


@functools.cache
def _load(name: str) -> tuple[Tensor, Tensor]:
    """(N, k) float64 raw features and (N,) long labels of the data set ``name``, read from the
    files scikit-learn ships (cached per process; callers must not modify them)."""
    try:
        from sklearn import datasets
    except ImportError:
        raise ImportError(
            f"dataset={name!r} is read from scikit-learn, which ships the data files; install the "
            "'data' extra: pip install 'moelab[data]'"
        ) from None
    bunch = getattr(datasets, _LOADERS[name])()
    return (torch.as_tensor(bunch.data, dtype=torch.float64),
            torch.as_tensor(bunch.target, dtype=torch.long))


def stratified_split(labels: Tensor, test_fraction: float, generator: torch.Generator
                     ) -> tuple[Tensor, Tensor]:
    """(train, test) sorted index tensors: in each class, round(test_fraction * n_c) points drawn
    at random (from ``generator``, classes in increasing order) go to the test split. A class left
    with no point on either side is a ValueError."""
    train, test = [], []
    for c in range(int(labels.max()) + 1):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_test = round(test_fraction * len(members))
        if not 0 < n_test < len(members):
            raise ValueError(
                f"test_fraction={test_fraction} leaves class {c} ({len(members)} points) with "
                f"{n_test} test and {len(members) - n_test} training points; both must be >= 1"
            )
        test.append(members[:n_test])
        train.append(members[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


@dataclass(frozen=True, eq=False)
class RealDataSample:
    """n labelled points of a :class:`RealDataTask`.

    Attributes:
        x: (n, D) embedded standardised features.
        y: (n, C) one-hot targets.
        label: (n,) long, the class of each point.
        index: (n,) long, each point's row in the data set.
        task: the task.
    """

    x: Tensor
    y: Tensor
    label: Tensor
    index: Tensor
    task: RealDataTask

    @property
    def region(self) -> Tensor:
        """(n,) long, the ground-truth region: :attr:`label`."""
        return self.label


@dataclass(frozen=True, eq=False)
class RealDataTask(Sampling):
    """A classification data set in R^D with a fixed train/test split; see the module docstring.

    A :class:`~moelab.tasks.base.Task` whose regions are the classes. Build it with
    :func:`build_real_data_task`.
    """

    dataset: str
    features: Tensor  # (N, k) float64, standardised with the training split's statistics
    labels: Tensor  # (N,) long
    train_index: Tensor  # (N_train,) long, sorted
    test_index: Tensor  # (N_test,) long, sorted, disjoint from train_index
    embedding: Tensor  # P (D, k) float64, orthonormal columns: x = P z
    dtype: torch.dtype

    @property
    def D(self) -> int:
        return self.embedding.shape[0]

    @property
    def native_width(self) -> int:
        """k, the number of features."""
        return self.features.shape[1]

    @property
    def n_classes(self) -> int:
        return int(self.labels.max()) + 1

    # the Task protocol's names
    d_in = D
    d_out = n_classes
    n_regions = n_classes

    @functools.cached_property
    def points(self) -> Tensor:
        """(N, D) float64, every point of the data set embedded."""
        return self.features @ self.embedding.T

    def embed(self, z: Tensor) -> Tensor:
        """(n, k) standardised features -> (n, D) in the task's dtype."""
        return (as_float64(z, self.native_width, "z") @ self.embedding.T).to(self.dtype)

    def region(self, x: Tensor) -> Tensor:
        """(n, D) points of the data set -> (n,) long, their classes. A point farther than 1e-4
        times the largest point norm from every data set point has no class: a ValueError."""
        x = as_float64(x, self.D)
        dist, nearest = torch.cdist(x, self.points).min(dim=1)
        tol = _MATCH_TOL * float(self.points.norm(dim=1).max())
        if bool((dist > tol).any()):
            i = int(dist.argmax())
            raise ValueError(
                f"x[{i}] is not a point of the {self.dataset!r} data set (distance "
                f"{float(dist[i]):.3g} to the nearest, tolerance {tol:.3g}); a real-data task "
                "knows the class of its own points only"
            )
        return self.labels[nearest]

    def take(self, index: Tensor) -> RealDataSample:
        """The data set points of rows ``index`` (n,) long."""
        label = self.labels[index]
        return RealDataSample(
            x=self.points[index].to(self.dtype),
            y=torch.nn.functional.one_hot(label, self.n_classes).to(self.dtype),
            label=label, index=index, task=self,
        )

    def train_set(self) -> RealDataSample:
        """The whole training split, in data set order."""
        return self.take(self.train_index)

    def test_set(self) -> RealDataSample:
        """The held-out split, in data set order: never drawn by :meth:`sample`."""
        return self.take(self.test_index)

    def _sample(self, n: int, rng: torch.Generator) -> RealDataSample:
        """n points of the training split, uniformly with replacement."""
        pick = torch.randint(len(self.train_index), (n,), generator=rng)
        return self.take(self.train_index[pick])


def build_real_data_task(
    dataset: str,
    *,
    D: int | None = None,
    embedding: str = "isometry",
    test_fraction: float = 0.25,
    split_seed: int = 0,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> RealDataTask:
    """A data set of :data:`DATASETS` as a task in R^D (see the module docstring).

    Args:
        dataset: ``"digits"``, ``"wine"`` or ``"breast_cancer"``.
        D: the ambient dimension, at least the native width k (64, 13, 30); None: k.
        embedding: ``"isometry"`` (random orthonormal map, drawn from the random state) or
            ``"pad"`` (zero padding, nothing drawn).
        test_fraction: the fraction of each class held out for testing, in (0, 1).
        split_seed: seeds the stratified split, apart from the embedding, so that one split can be
            embedded in many ways (and D changes nothing but the embedding).
        seed, generator: the random state of the embedding (at most one).
        dtype: floating dtype of the returned points and targets (the geometry is float64).
    """
    one_of("dataset", dataset, DATASETS)
    kind = one_of("embedding", embedding, EMBEDDINGS)
    test_fraction = positive_float("test_fraction", test_fraction)
    if test_fraction >= 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int):
        raise TypeError(f"split_seed must be an int, got {split_seed!r} ({type(split_seed).__name__})")
    dtype = check_dtype(dtype)
    raw, labels = _load(dataset)
    k = raw.shape[1]
    D = k if D is None else positive_int("D", D)
    if D < k:
        raise ValueError(f"D={D} is below the native width {k} of dataset={dataset!r}; an "
                         f"isometric embedding needs D >= {k}")
    rng = resolve_generator(seed, generator)
    train, test = stratified_split(labels, test_fraction, torch.Generator().manual_seed(split_seed))
    mean, std = raw[train].mean(0), raw[train].std(0)
    features = (raw - mean) / torch.where(std > 0, std, 1.0)
    return RealDataTask(dataset=dataset, features=features, labels=labels.clone(),
                        train_index=train, test_index=test,
                        embedding=embedding_matrix(kind, k, D, rng), dtype=dtype)
