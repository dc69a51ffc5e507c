"""Pieces of the benchmark scripts whose numbers depend on them being right."""

import torch
import torch.nn.functional as F

from bench.lm_throughput import chunked_cross_entropy, flops_per_token
from genrec.models.presets import LMRecConfig, count_lm_parameters


def test_chunked_cross_entropy_equals_the_whole_loss_and_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(100, 16, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=False)
    labels = torch.randint(0, 50, (100,))
    chunked = chunked_cross_entropy(hidden, head, labels, chunk=32)  # 32 + 32 + 32 + 4 positions
    chunked.backward()
    grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad = head.weight.grad = None
    whole = F.cross_entropy(hidden @ head.weight.t(), labels)
    whole.backward()
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(grads[0], hidden.grad)
    torch.testing.assert_close(grads[1], head.weight.grad)


def test_flops_per_token_is_palms_formula():
    config = LMRecConfig.from_name("1m")
    matmul = count_lm_parameters(config, embeddings=False) + config.hidden_size * config.vocab_size
    attention = 12 * config.num_layers * config.num_heads * (config.hidden_size // config.num_heads) * 256
    assert flops_per_token(config, 256) == 6 * matmul + attention
