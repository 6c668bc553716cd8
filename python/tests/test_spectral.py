"""specopt.spectral_power against float64 SVD references, options, info and errors."""
import pytest
import torch

import specopt


def svd_power(O, p):
    """Reference U diag(s^p) V^T in float64 (full-rank inputs only)."""
    U, S, Vh = torch.linalg.svd(O.double(), full_matrices=False)
    return (U * S.pow(p).unsqueeze(-2)) @ Vh


@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (3, 5, 5)])
def test_p0_svd_is_polar_factor(shape):
    O = torch.randn(*shape, dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(O, full_matrices=False)
    torch.testing.assert_close(specopt.spectral_power(O, 0.0, "svd"), U @ Vh, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["svd", "eigh"])
@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, -0.25])
def test_exact_methods_match_svd_reference(method, p):
    O = torch.randn(2, 9, 6, dtype=torch.float64)
    out = specopt.spectral_power(O, p, method)
    if p < 0:  # documented regularised form: s (s^2 + eps smax^2)^{-(1-p)/2}
        U, S, Vh = torch.linalg.svd(O, full_matrices=False)
        eps = specopt.spectral_option_defaults()["neg_eps"]
        smax = S.max(-1, keepdim=True).values
        ref = (U * (S * (S * S + eps * smax * smax).pow(-(1 - p) / 2)).unsqueeze(-2)) @ Vh
    else:
        ref = svd_power(O, p)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    assert out.shape == O.shape and out.dtype == O.dtype


@pytest.mark.parametrize("method", specopt.methods())
def test_every_method_approximates_polar_factor(method):
    # Square, well-conditioned input: no shape scale (paper's p = 0 factor is 1), fast
    # convergence. newton_schulz is Muon's approximate iteration: singular values land
    # in roughly [0.7, 1.2], hence its looser bound.
    O = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))[0] @ torch.diag(
        torch.linspace(0.5, 2.0, 16, dtype=torch.float64))
    out = specopt.spectral_power(O.float(), 0.0, method)
    ref = svd_power(O, 0.0)
    bound = 0.35 if method in ("newton_schulz", "paper") else 1e-3
    assert (out.double() - ref).abs().max().item() < bound


def test_p1_returns_input_and_zero_matrix_maps_to_zero():
    O = torch.randn(5, 3)
    assert specopt.spectral_power(O, 1.0).data_ptr() == O.data_ptr()
    Z = torch.zeros(4, 3)
    assert torch.equal(specopt.spectral_power(Z, 0.0, "svd"), Z)


def test_compute_dtype_and_info():
    O = torch.randn(12, 5)
    out, info = specopt.spectral_power(O, 0.5, "eigh", compute_dtype=torch.float64,
                                       return_info=True)
    assert out.dtype == torch.float32
    # float64 arithmetic: the float32 result is the rounded float64 reference
    torch.testing.assert_close(out.double(), svd_power(O, 0.5), rtol=0, atol=1e-6)
    assert set(info) == {"method", "iterations", "residual", "p_effective", "matmul_flops"}
    assert info["method"] == "eigh" and info["p_effective"] == 0.5
    # eigh on a tall m x n: O^T O and O M (2 m n^2 flops each), M = V diag(f) V^T (2 n^3)
    m, n = O.shape
    assert info["matmul_flops"] == 2 * 2 * m * n * n + 2 * n ** 3


def test_auto_resolves_to_a_named_method():
    _, info = specopt.spectral_power(torch.randn(6, 4), 0.0, return_info=True)
    assert info["method"] in specopt.methods() and info["method"] != "auto"


def test_option_defaults_come_from_cpp_and_are_accepted():
    defaults = specopt.spectral_option_defaults()
    assert {"tol", "iterations", "newton_lower", "ns_steps", "ns_coefficients", "compute_dtype",
            "neg_eps", "rank_tol", "method"} <= set(defaults)
    O = torch.randn(6, 4, dtype=torch.float64)
    options = {k: v for k, v in defaults.items() if k != "method"}
    torch.testing.assert_close(specopt.spectral_power(O, 0.0, "svd", **options),
                               svd_power(O, 0.0), rtol=0, atol=1e-12)


def test_rank_tol_zeroes_small_singular_values():
    U = torch.linalg.qr(torch.randn(6, 3, dtype=torch.float64))[0]
    O = U @ torch.diag(torch.tensor([1.0, 0.5, 1e-3], dtype=torch.float64))
    # O = U diag(1, 0.5, 1e-3) I: with rank_tol 1e-2 the last direction counts as zero,
    # so Psi_0 is the partial isometry U[:, :2] I[:2, :].
    out = specopt.spectral_power(O, 0.0, "svd", rank_tol=1e-2)
    torch.testing.assert_close(out, U[:, :2] @ torch.eye(2, 3, dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_errors_carry_cpp_messages():
    O = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"spectral_power: p must lie in \[-0.5, 1\], got 3"):
        specopt.spectral_power(O, 3.0)
    with pytest.raises(ValueError, match="unknown spectral method 'qr'.*svd"):
        specopt.spectral_power(O, 0.0, "qr")
    with pytest.raises(ValueError, match="unknown spectral option 'tolerance'"):
        specopt.spectral_power(O, 0.0, tolerance=1e-3)
    with pytest.raises(ValueError, match="unknown Newton-Schulz coefficient set 'x'"):
        specopt.spectral_power(O, 0.0, ns_coefficients="x")
    with pytest.raises(ValueError, match="method 'newton_schulz' computes only p = 0"):
        specopt.spectral_power(O, 0.5, "newton_schulz")
    with pytest.raises(ValueError, match="method 'paper' supports only p in"):
        specopt.spectral_power(O, 0.3, "paper")
    with pytest.raises(ValueError, match="tol must be > 0, got -1"):
        specopt.spectral_power(O, 0.5, "newton", tol=-1.0)
    with pytest.raises(TypeError, match="'iterations' must be an int"):
        specopt.spectral_power(O, 0.0, iterations=2.5)
    with pytest.raises(TypeError, match="'compute_dtype' must be a torch.dtype"):
        specopt.spectral_power(O, 0.0, compute_dtype="float64")
    bad = O.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        specopt.spectral_power(bad, 0.0)
    with pytest.raises(RuntimeError, match="expected a matrix"):
        specopt.spectral_power(torch.randn(4), 0.0)


def test_variant_table_is_the_cpp_one():
    names = [v.name for v in specopt.named_variants()]
    assert names == ["Adam", "AdamS", "AdamQ", "AdamZ", "mSGD", "mSGDS", "mSGDQ", "mSGDZ"]
    v = specopt.parse_variant("msgdq")
    assert (v.name, v.family, v.p) == ("mSGDQ", "mSGD", 0.25)
    v = specopt.parse_variant("adam:p=0.3")
    assert (v.family, v.p) == ("Adam", 0.3)
    with pytest.raises(ValueError, match="unknown optimizer variant 'Lion'"):
        specopt.parse_variant("Lion")
    with pytest.raises(ValueError, match=r"p must lie in \[-0.5, 1\]"):
        specopt.parse_variant("adam:p=2")


@pytest.mark.parametrize("p", [0.5, 0.25, 0.3])
def test_newton_iterates_to_the_reference(p):
    O = torch.randn(20, 8, dtype=torch.float64)
    out, info = specopt.spectral_power(O, p, "newton", tol=1e-9, return_info=True)
    assert info["method"] == "newton" and info["iterations"] > 0 and info["matmul_flops"] > 0
    ref = svd_power(O, info["p_effective"])  # newton rounds p to a multiple of 1/64
    assert abs(info["p_effective"] - p) < 1e-2
    assert ((out - ref).norm() / ref.norm()).item() < 1e-6
