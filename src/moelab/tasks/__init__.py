"""Target generators with ground truth, scikit-learn style (``make_*``).

* :func:`make_manifold_task`: a function on a manifold in R^D with an E-chart linear atlas and a
  smooth partition of unity (Sec. 4, Experiment I, Example 4.6).
* :func:`make_piecewise_task`: the Eq. (4) target on [0, E]^L with its E^L pieces (Experiment II).
* :func:`make_product_task`: the Eq. (5) target on a product of manifolds.
* :func:`build_real_data_task`: a classification data set shipped with scikit-learn (digits, wine,
  breast_cancer), isometrically embedded into R^D, with a fixed train/test split.

Each returns a frozen sample dataclass whose ``task`` evaluates the ground truth on new points and
draws further samples (``sample.task.sample(n, seed=...)`` for a test set); ``build_*`` returns the
task alone. Every task class implements the :class:`Task` protocol (``d_in``, ``d_out``,
``n_regions``, ``region(x)``, ``sample(n)``) and is a training sampler, ``task(n, generator) ->
(x, y)``. Randomness comes only from an explicit ``seed`` or ``generator``.
"""

from moelab.tasks.atlas import Atlas, CapAtlas, SpiralAtlas, TorusAtlas, make_atlas, smooth_bump
from moelab.tasks.base import Sample, Task
from moelab.tasks.manifold_task import (
    ManifoldSample,
    ManifoldTask,
    build_manifold_task,
    make_manifold_task,
)
from moelab.tasks.manifolds import (
    EMBEDDINGS,
    MANIFOLDS,
    Circle,
    Manifold,
    Sphere,
    Spiral,
    SwissRoll,
    Torus,
    embedding_matrix,
    make_manifold,
)
from moelab.tasks.piecewise import (
    OUTPUTS,
    ParabolaPiece,
    PiecewiseSample,
    PiecewiseTask,
    QuarticPiece,
    build_piecewise_task,
    make_piecewise_task,
    paper_subfunctions,
)
from moelab.tasks.product import (
    PRODUCT_SUBFUNCTIONS,
    ProductSample,
    ProductTask,
    Sinusoid,
    build_product_task,
    make_product_task,
)
from moelab.tasks.real_data import (
    DATASETS,
    RealDataSample,
    RealDataTask,
    build_real_data_task,
)
from moelab.tasks.targets import TARGETS, PaperTarget, RidgeTarget, make_ridge_target

__all__ = [
    "DATASETS",
    "EMBEDDINGS",
    "MANIFOLDS",
    "OUTPUTS",
    "PRODUCT_SUBFUNCTIONS",
    "TARGETS",
    "Atlas",
    "CapAtlas",
    "Circle",
    "Manifold",
    "ManifoldSample",
    "ManifoldTask",
    "PaperTarget",
    "ParabolaPiece",
    "PiecewiseSample",
    "PiecewiseTask",
    "ProductSample",
    "ProductTask",
    "QuarticPiece",
    "RealDataSample",
    "RealDataTask",
    "RidgeTarget",
    "Sample",
    "Sinusoid",
    "Sphere",
    "Spiral",
    "SpiralAtlas",
    "SwissRoll",
    "Task",
    "Torus",
    "TorusAtlas",
    "build_manifold_task",
    "build_piecewise_task",
    "build_product_task",
    "build_real_data_task",
    "embedding_matrix",
    "make_atlas",
    "make_manifold",
    "make_manifold_task",
    "make_piecewise_task",
    "make_product_task",
    "make_ridge_target",
    "paper_subfunctions",
    "smooth_bump",
]
