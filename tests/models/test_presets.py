"""TIGER size presets: names match parameter counts, overrides, errors."""

import pytest

from genrec.models.presets import (
    DEFAULT_VOCAB_SIZE,
    TIGER_PRESETS,
    TigerConfig,
    count_parameters,
    names,
    nominal_size,
)


def test_default_vocab_is_three_levels_of_256_plus_dedup_and_specials():
    assert DEFAULT_VOCAB_SIZE == 2 + 3 * 256 + 256 == 1026


def test_names_cover_the_paper_ladder_smallest_first():
    assert names() == ["336k", "6.7m", "13m", "21m", "43m", "88m", "192m"]
    sizes = [nominal_size(n) for n in names()]
    assert sizes == sorted(sizes)
    assert nominal_size("6.7m") == 6.7e6 and nominal_size("336k") == 336e3


@pytest.mark.parametrize("name", names())
def test_parameter_count_is_near_the_name(name):
    count = count_parameters(TigerConfig.from_name(name))
    assert abs(count / nominal_size(name) - 1) < 0.15, f"{name}: {count:,}"


def test_pinned_counts():
    """Exact counts of two presets at the default vocabulary (computed once, pinned)."""
    assert count_parameters(TigerConfig.from_name("336k")) == 333_120
    assert count_parameters(TigerConfig.from_name("13m")) == 12_979_584
    # GRID's feed-forward block is what makes its default shape 13M: plain T5 blocks give 4.6M
    assert count_parameters(TigerConfig.from_name("13m", ff_layers=1)) == 4_590_976


def test_stated_shapes_of_the_paper_are_kept():
    small, grid, large = (TIGER_PRESETS[n] for n in ("336k", "13m", "192m"))
    assert (small.num_layers, small.num_decoder_layers, small.d_model) == (1, 1, 64)
    assert (grid.num_layers, grid.num_decoder_layers, grid.d_model, grid.num_heads, grid.d_kv, grid.d_ff) == (4, 4, 128, 6, 64, 1024)
    assert (large.num_layers + large.num_decoder_layers, large.d_model) == (20, 384)


def test_count_grows_with_vocabulary():
    config = TigerConfig.from_name("336k")
    assert count_parameters(config, DEFAULT_VOCAB_SIZE + 10) - count_parameters(config) == 10 * config.d_model


def test_from_name_overrides_and_case():
    config = TigerConfig.from_name("13M", num_layers=1, dropout=0.0)
    assert config.num_layers == 1 and config.dropout == 0.0
    assert config.num_decoder_layers == TIGER_PRESETS["13m"].num_decoder_layers
    assert TIGER_PRESETS["13m"].num_layers == 4  # presets are not mutated


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown TIGER preset 'huge'.*336k, 6.7m, 13m"):
        TigerConfig.from_name("huge")


def test_unknown_field_and_bad_values():
    with pytest.raises(ValueError, match="unknown TigerConfig field"):
        TigerConfig.from_name("13m", depth=3)
    with pytest.raises(ValueError, match="num_heads must be >= 1"):
        TigerConfig.from_name("13m", num_heads=0)
    with pytest.raises(ValueError, match="plain activation"):
        TigerConfig.from_name("13m", feed_forward_proj="gated-gelu")
    assert TigerConfig.from_name("13m", feed_forward_proj="gated-gelu", ff_layers=1).ff_layers == 1


def test_build_has_the_shape():
    model = TigerConfig.from_name("336k", ff_layers=2).build(40)
    assert model.config.vocab_size == 40 and model.config.decoder_start_token_id == 0
    assert len(model.encoder.block) == 1 and len(model.decoder.block) == 1
    ff = model.encoder.block[0].layer[-1].DenseReluDense
    assert [layer.out_features for layer in ff.hidden] == [272, 272] and ff.out.out_features == 64
    assert model.lm_head.weight is model.shared.weight  # tied
