"""Bad input: each error names the argument, the value and what was expected."""

import pytest
import torch

from moelab.tasks import (
    Circle,
    Sphere,
    Spiral,
    Torus,
    build_manifold_task,
    make_atlas,
    make_manifold_task,
    make_piecewise_task,
    make_product_task,
)


def test_d_not_below_D():
    with pytest.raises(ValueError, match=r"D=3 must exceed the intrinsic dimension d=3"):
        make_manifold_task("sphere", 10, D=3, d=3)


def test_D_below_native_ambient_dimension():
    with pytest.raises(ValueError, match=r"D=3 is too small.*R\^4.*D >= 4"):
        make_manifold_task("torus", 10, D=3, d=2)


def test_product_block_too_narrow_names_the_block():
    with pytest.raises(ValueError, match=r"D=2 \(block 1\) must exceed the intrinsic dimension d=2"):
        make_product_task(10, E=3, D=[3, 2], manifolds=["circle", "sphere"])
    with pytest.raises(ValueError, match=r"D=3 \(block 0\) is too small.*R\^4.*D >= 4"):
        make_product_task(10, E=4, D=[3, 4], manifolds=["torus", "circle"], d=[2, None])


def test_d_impossible_for_a_fixed_dimension_manifold():
    with pytest.raises(ValueError, match=r"d=2 is impossible for manifold='circle'"):
        make_manifold_task("circle", 10, D=4, d=2)


@pytest.mark.parametrize("bad", [0, -2])
def test_n_charts_below_one(bad):
    with pytest.raises(ValueError, match=rf"n_charts must be >= 1, got {bad}"):
        make_manifold_task("circle", 10, D=4, n_charts=bad)


@pytest.mark.parametrize("bad", [0, -1])
def test_E_below_one(bad):
    with pytest.raises(ValueError, match=rf"E must be >= 1, got {bad}"):
        make_piecewise_task(10, E=bad, L=2)
    with pytest.raises(ValueError, match=rf"E must be >= 1, got {bad}"):
        make_product_task(10, E=bad, D=3)


def test_L_below_one():
    with pytest.raises(ValueError, match=r"L must be >= 1, got 0"):
        make_piecewise_task(10, E=3, L=0)
    with pytest.raises(ValueError, match=r"L must be >= 1, got 0"):
        make_product_task(10, E=3, D=3, L=0)


def test_unknown_manifold():
    with pytest.raises(ValueError, match=r"manifold='klein' is unknown; expected one of .*circle"):
        make_manifold_task("klein", 10, D=4)


def test_unknown_target():
    with pytest.raises(ValueError, match=r"target='smooth' is unknown; expected one of .*paper"):
        make_manifold_task("circle", 10, D=4, target="smooth")


def test_unknown_embedding():
    with pytest.raises(ValueError, match=r"embedding='random' is unknown; expected .*isometry"):
        make_manifold_task("circle", 10, D=4, embedding="random")


def test_unknown_output():
    with pytest.raises(ValueError, match=r"output='max' is unknown; expected one of .*vector"):
        make_piecewise_task(10, E=3, L=2, output="max")
    with pytest.raises(ValueError, match=r"output='max' is unknown"):
        make_product_task(10, E=3, D=3, output="max")


def test_unknown_subfunctions():
    with pytest.raises(ValueError, match=r"subfunctions='cubic' is unknown; expected .*paper"):
        make_piecewise_task(10, E=3, L=2, subfunctions="cubic")
    with pytest.raises(ValueError, match=r"subfunctions='paper' is unknown; expected .*sinusoid"):
        make_product_task(10, E=3, D=3, subfunctions="paper")


def test_subfunctions_of_the_wrong_shape():
    f = [lambda z: z] * 3
    with pytest.raises(ValueError, match=r"subfunctions must hold L=2 sequences of E=3 .*\[3\]"):
        make_piecewise_task(10, E=3, L=2, subfunctions=[f])
    with pytest.raises(TypeError, match=r"subfunctions must contain callables"):
        make_piecewise_task(10, E=3, L=1, subfunctions=[[1, 2, 3]])


@pytest.mark.parametrize("bad", [0, -5])
def test_n_below_one(bad):
    with pytest.raises(ValueError, match=rf"n must be >= 1, got {bad}"):
        make_manifold_task("circle", bad, D=4)
    with pytest.raises(ValueError, match=rf"n must be >= 1, got {bad}"):
        make_piecewise_task(bad, E=3, L=2)
    with pytest.raises(ValueError, match=rf"n must be >= 1, got {bad}"):
        make_product_task(bad, E=3, D=3)


@pytest.mark.parametrize("bad", [2.5, 10.0, "10", True])
def test_non_integer_n(bad):
    with pytest.raises(TypeError, match=r"n must be an int, got"):
        make_manifold_task("circle", bad, D=4)
    with pytest.raises(TypeError, match=r"n must be an int, got"):
        make_piecewise_task(bad, E=3, L=2)
    with pytest.raises(TypeError, match=r"n must be an int, got"):
        build_manifold_task("circle", D=4).sample(bad)


def test_negative_noise():
    with pytest.raises(ValueError, match=r"noise must be a finite number >= 0, got -0.1"):
        make_manifold_task("circle", 10, D=4, noise=-0.1)
    with pytest.raises(ValueError, match=r"noise must be a finite number >= 0, got -1"):
        make_piecewise_task(10, E=3, L=2, noise=-1)


def test_bad_smoothness():
    with pytest.raises(ValueError, match=r"smoothness must be >= 0, got -1"):
        make_manifold_task("circle", 10, D=4, target="ridge", smoothness=-1)
    with pytest.raises(TypeError, match=r"smoothness must be an int kappa >= 0.*1.5"):
        make_manifold_task("circle", 10, D=4, target="ridge", smoothness=1.5)
    with pytest.raises(ValueError, match=r"smoothness=2 applies to target='ridge' only"):
        make_manifold_task("circle", 10, D=4, target="paper", smoothness=2)


def test_seed_and_generator_together():
    with pytest.raises(ValueError, match=r"at most one of seed and generator"):
        make_manifold_task("circle", 10, D=4, seed=0, generator=torch.Generator())
    with pytest.raises(TypeError, match=r"seed must be an int or None, got 1.5"):
        make_piecewise_task(10, E=3, L=2, seed=1.5)


def test_non_float_dtype():
    with pytest.raises(TypeError, match=r"dtype must be a floating torch.dtype, got torch.int64"):
        make_manifold_task("circle", 10, D=4, dtype=torch.int64)
    with pytest.raises(TypeError, match=r"dtype must be a floating torch.dtype"):
        make_piecewise_task(10, E=3, L=2, dtype=torch.int32)


def test_too_few_charts_for_injective_linear_charts():
    with pytest.raises(ValueError, match=r"n_charts=2 is impossible for the circle.*>= 3"):
        make_atlas(Circle(), 2)
    with pytest.raises(ValueError, match=r"n_charts=3 is too few for S\^2.*>= 4"):
        make_atlas(Sphere(2), 3)
    with pytest.raises(ValueError, match=r"n_charts=10 is impossible for the torus.*k\^2"):
        make_atlas(Torus(2), 10)
    with pytest.raises(ValueError, match=r"n_charts=4 with chart_overlap=0.25 .*spiral.*< 90 deg"):
        make_atlas(Spiral(), 4)
    with pytest.raises(ValueError, match=r"n_charts=5 with chart_overlap=0.25 .*3-sphere"):
        make_atlas(Sphere(3), 5)


def test_bad_chart_overlap_and_chart_index():
    with pytest.raises(ValueError, match=r"chart_overlap must be a finite number > 0, got 0"):
        make_atlas(Circle(), 4, chart_overlap=0)
    atlas = make_atlas(Circle(), 4)
    with pytest.raises(ValueError, match=r"chart must lie in \[0, 4\)"):
        atlas.inverse(torch.zeros(2, 1), 4)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\), got \(3, 5\)"):
        atlas.phi(torch.zeros(3, 5))
