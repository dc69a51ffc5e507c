import pytest
import torch

from genrec.quantize import QuantizerOutput, ResidualQuantizer


def _quantizer(**kwargs) -> ResidualQuantizer:
    torch.manual_seed(0)
    q = ResidualQuantizer(8, levels=3, codebook_size=16, **kwargs)
    q.init_from_data(torch.randn(400, 8))
    return q


def test_output_shapes_and_eval_mode_matches_the_library():
    q = _quantizer().eval()
    assert q.initialised
    x = torch.randn(50, 8)
    out = q(x)
    assert isinstance(out, QuantizerOutput)
    assert out.quantized.shape == (50, 8) and out.codes.shape == (50, 3) and out.codes.dtype == torch.int64
    assert out.commit_loss.ndim == 0 and out.commit_loss > 0  # defined in eval mode too
    assert out.level_losses.shape == (3,)
    library_quantized, library_codes, _ = q.rvq(x)
    assert torch.equal(out.codes, library_codes)
    assert torch.allclose(out.quantized, library_quantized, atol=1e-6)
    assert torch.allclose(q.codes_to_vectors(out.codes), out.quantized, atol=1e-6)
    assert out.commit_loss == pytest.approx(0.25 * float(out.level_losses.sum()))


@pytest.mark.parametrize("rotation_trick", [False, True])
def test_training_gradient_reaches_the_input_once(rotation_trick):
    q = _quantizer(rotation_trick=rotation_trick).train()
    x = torch.randn(50, 8, requires_grad=True)
    out = q(x)
    upstream = torch.randn(50, 8)
    (out.quantized * upstream).sum().backward()
    if not rotation_trick:  # straight-through: identity Jacobian (the library's own STE sums one per level)
        assert torch.allclose(x.grad, upstream)
    else:
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_training_updates_codebooks_but_eval_does_not():
    q = _quantizer()
    x = torch.randn(100, 8)
    books = q.codebooks.clone()
    q.eval()(x)
    assert torch.equal(q.codebooks, books)
    q.train()(x)
    assert not torch.equal(q.codebooks, books)


def test_init_rescales_usage_counts_to_a_batch():
    torch.manual_seed(0)
    q = ResidualQuantizer(4, levels=2, codebook_size=8)
    q.init_from_data(torch.randn(800, 4), batch_size=80)
    for layer in q.rvq.layers:
        assert float(layer._codebook.cluster_size.sum()) == pytest.approx(80, rel=1e-4)


def test_wrong_input_shape_raises():
    with pytest.raises(ValueError, match=r"\[B, 8\]"):
        _quantizer()(torch.randn(4, 5))
