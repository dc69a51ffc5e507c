import pytest
import torch

from genrec.quantize import RQKMeans, SemanticIDs, build_semantic_ids, kmeans, quality_report
from tests.quantize.conftest import planted_clusters, same_code_rates


@pytest.mark.parametrize("normalize", ["none", "input", "residual"])
@pytest.mark.parametrize("seed", [0, 1])
def test_planted_clusters_share_the_first_code(normalize, seed):
    x, labels = planted_clusters(seed)
    codes = RQKMeans(levels=2, codebook_size=8, normalize=normalize, seed=seed).fit(x).encode(x)
    within, across = same_code_rates(codes[:, 0], labels)
    assert within >= 0.9 and across <= 0.1, (within, across)


@pytest.mark.parametrize("normalize", ["none", "residual"])
def test_no_collapse_on_gaussian_points(normalize):
    x = torch.randn(2000, 32, generator=torch.Generator().manual_seed(0))
    model = RQKMeans(levels=3, codebook_size=16, normalize=normalize).fit(x)
    report = quality_report(model.encode(x), 16, model.reconstruction_error(x))
    assert all(level["fraction_used"] >= 0.5 for level in report["per_level"]), report["per_level"]
    assert report["warnings"] == []


def test_identical_embeddings_collapse_is_reported_and_dedup_separates_them():
    x = torch.ones(100, 8)
    codes = RQKMeans(levels=3, codebook_size=16).fit(x).encode(x)
    report = quality_report(codes, 16)
    assert all(level["codes_used"] == 1 for level in report["per_level"])
    assert report["collision_rate"] == pytest.approx(0.99)
    sids = SemanticIDs.from_codes(codes, 16)
    assert sids.table[:, -1].tolist() == list(range(100))


def test_duplicate_embeddings_get_the_same_codes_and_different_dedup_digits():
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    x[150] = x[20]
    model = RQKMeans(levels=2, codebook_size=8).fit(x)
    sids = build_semantic_ids(model, x)
    assert sids.sid_of(20)[:-1] == sids.sid_of(150)[:-1]
    assert sids.sid_of(150)[-1] > sids.sid_of(20)[-1]
    assert torch.unique(sids.table, dim=0).shape[0] == 200
    assert sids.quantizer["class"] == "RQKMeans" and sids.quality["reconstruction_error"] is not None


def test_plain_rvq_reconstructs_with_the_sum_of_centroids_and_levels_help():
    x = torch.randn(1000, 16, generator=torch.Generator().manual_seed(0))
    errors = []
    for levels in (1, 2, 3):
        model = RQKMeans(levels=levels, codebook_size=16, normalize="none").fit(x)
        codes = model.encode(x)
        manual = sum(model.centroids[level][codes[:, level]] for level in range(levels))
        assert torch.allclose(model.reconstruct(codes), manual, atol=1e-5)
        errors.append(model.reconstruction_error(x))
    assert errors[0] > errors[1] > errors[2]


def test_residual_mode_reconstruction_beats_the_mean():
    x = torch.randn(1000, 16, generator=torch.Generator().manual_seed(0)) + 2
    model = RQKMeans(levels=3, codebook_size=16, normalize="residual").fit(x)
    baseline = float(((x - x.mean(0)) ** 2).mean())
    assert model.reconstruction_error(x) < 0.8 * baseline


def test_seeded_and_deterministic(tmp_path):
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    a = RQKMeans(levels=2, codebook_size=8, seed=3).fit(x)
    b = RQKMeans(levels=2, codebook_size=8, seed=3).fit(x)
    assert torch.equal(a.centroids, b.centroids)
    back = RQKMeans.load(a.save(tmp_path / "rqk.safetensors"))
    assert torch.equal(back.encode(x), a.encode(x)) and back.config() == a.config()
    assert back.fit_stats == a.fit_stats


def test_kmeans_stops_early_and_reseeds_empty_clusters():
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(0))
    result = kmeans(x, 5, iters=100, tol=1e-3)
    assert result.iterations < 100
    assert torch.bincount(result.assignments, minlength=5).min() > 0
    # 3 distinct points, 5 clusters: two clusters stay empty and get re-seeded each iteration
    few = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).repeat(10, 1)
    result = kmeans(few, 5, iters=3)
    assert result.inertia == pytest.approx(0.0, abs=1e-6) and result.reseeded > 0


def test_encode_before_fit_raises():
    with pytest.raises(RuntimeError, match="not fitted"):
        RQKMeans().encode(torch.zeros(2, 2))
