"""The transductive size prior: target size from supports, L_TI, and the query size estimator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from edgeseg.runtime.errors import InputError

from edgeseg.adapters import build_adapter
from edgeseg.train.size_prior import (
    QuerySizeEstimator,
    target_size_ml,
    ti_loss,
    voxel_volume_ml,
)
from tests.conftest import ellipsoid_world


@pytest.fixture(autouse=True)
def one_thread():
    # These ops are tiny: with 2 threads on a busy 2-core machine, OpenMP contention made them 100x slower
    # (0.05 s vs 5-9 s measured for the same loop). One thread, restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- L_TI ------------------------------------------------------------------------------------------


def test_ti_loss_band_values_and_gradient_signs():
    S = 100.0
    for s_hat in (70.0, 85.0, 100.0, 129.0, 130.0):
        assert ti_loss(torch.tensor(s_hat), S).item() == 0.0
    assert ti_loss(torch.tensor(50.0), S).item() == pytest.approx((70 - 50) / 100)
    assert ti_loss(torch.tensor(150.0), S).item() == pytest.approx((150 - 130) / 100)
    above = torch.tensor(180.0, requires_grad=True)
    ti_loss(above, S).backward()
    assert above.grad.item() == pytest.approx(1 / S)  # descent lowers S_hat
    below = torch.tensor(20.0, requires_grad=True)
    ti_loss(below, S).backward()
    assert below.grad.item() == pytest.approx(-1 / S)  # descent raises S_hat
    inside = torch.tensor(110.0, requires_grad=True)
    ti_loss(inside, S).backward()
    assert inside.grad.item() == 0.0


def test_ti_loss_is_scale_free_and_takes_gamma():
    for s_hat in (10.0, 33.0, 190.0):
        a = ti_loss(torch.tensor(s_hat), 100.0)
        b = ti_loss(torch.tensor(s_hat * 10), 1000.0)
        assert a.item() == pytest.approx(b.item(), rel=1e-6)
    assert ti_loss(torch.tensor(140.0), 100.0, gamma=0.5).item() == 0.0
    assert ti_loss(torch.tensor(140.0), 100.0, gamma=0.1).item() == pytest.approx(0.3)
    with pytest.raises(InputError):
        ti_loss(torch.tensor(1.0), 0.0)
    with pytest.raises(InputError):
        ti_loss(torch.tensor(1.0), 1.0, gamma=1.5)


# The release's variant: a reference kept for comparison with `ti_loss`, not used by edgeseg's training.
def ti_loss_released(p_hat: torch.Tensor, p_t: float, margin: float = 0.3) -> torch.Tensor:
    """The 2023 release's size penalty (``fseft/transductive/TI_modules.py``), kept as written there.

    ``e = (p_t - p_hat) / max(p_hat, p_t)``; penalty ``|e| - m`` if ``e > m``, ``|e| + m`` if ``e < -m``,
    else 0. Asymmetric: over-segmenting beyond the margin costs ``2m`` more than under-segmenting by as
    much, and the penalty jumps at ``e = -m``. As in the release the denominator is a constant (taken
    from ``p_hat``'s value, no gradient through it). The release fed proportions (sizes over the query's
    size); the ratio makes the units cancel, so sizes in mL work as well. Scalar inputs only.
    """
    p_hat = torch.as_tensor(p_hat)
    if p_hat.numel() != 1:
        raise InputError("ti_loss_released takes a scalar predicted size", fix="sum the prediction first")
    p_t = float(p_t)
    if not p_t > 0:
        raise InputError(f"target p_t={p_t} must be positive", fix="estimate it with target_size_ml")
    denom = max(float(p_hat.detach()), p_t)
    e = (p_t - p_hat) / denom
    ev = float(e.detach())
    if ev > margin:
        return torch.abs(e) - margin
    if ev < -margin:
        return torch.abs(e) + margin
    return p_hat * 0.0  # zero, still attached to the graph


def test_ti_loss_released_matches_hand_values():
    # e = (p_t - p_hat) / max(p_hat, p_t); m = 0.3
    assert ti_loss_released(torch.tensor(0.05), 0.1).item() == pytest.approx(0.5 - 0.3)  # e = +0.5
    assert ti_loss_released(torch.tensor(0.2), 0.1).item() == pytest.approx(0.5 + 0.3)  # e = -0.5
    assert ti_loss_released(torch.tensor(0.09), 0.1).item() == 0.0  # e = +0.1
    assert ti_loss_released(torch.tensor(0.12), 0.1).item() == 0.0  # e = -1/6
    assert ti_loss_released(torch.tensor(0.02), 0.1, margin=0.5).item() == pytest.approx(0.8 - 0.5)  # e = +0.8
    p = torch.tensor(0.2, requires_grad=True)
    ti_loss_released(p, 0.1).backward()
    assert p.grad.item() == pytest.approx(1 / 0.2)  # constant denominator: d|e|/dp = 1 / max
    q = torch.tensor(0.09, requires_grad=True)
    ti_loss_released(q, 0.1).backward()  # zero, still differentiable
    assert q.grad.item() == 0.0



def test_ti_loss_is_symmetric_about_its_band_where_the_released_variant_is_not():
    """Why edgeseg trains with `ti_loss`: 20 mL beyond either edge of the band costs the same; the release's
    penalty charges over-segmentation 2m more (and is zero only inside a band it sets on the ratio)."""
    S = 100.0
    for s_hat in (90.0, 100.0, 110.0):
        assert ti_loss(torch.tensor(s_hat), S).item() == 0.0 and ti_loss_released(torch.tensor(s_hat), S).item() == 0.0
    assert ti_loss(torch.tensor(50.0), S).item() == pytest.approx(ti_loss(torch.tensor(150.0), S).item())
    under, over = ti_loss_released(torch.tensor(50.0), S).item(), ti_loss_released(torch.tensor(150.0), S).item()
    assert under == pytest.approx(0.5 - 0.3) and over == pytest.approx(1 / 3 + 0.3) and over > under + 0.4


# --- target size -----------------------------------------------------------------------------------


def test_target_size_counts_the_largest_26_connected_component():
    m = np.zeros((12, 12, 12), np.uint8)
    m[1:5, 1:5, 1:5] = 1  # 64 voxels
    m[9, 9, 9] = 1  # stray island
    m[4, 4, 5] = 1  # face-attached: part of the organ
    m[5, 5, 5] = 1  # corner-attached to (4, 4, 4): the release's 26-connectivity keeps it
    est = target_size_ml([m], [0.5])
    assert est.S_ml == pytest.approx(66 * 0.5) and est.kept == (0,) and est.dropped == ()


def test_target_size_is_in_physical_units():
    centre, radii = (45.0, 45.0, 45.0), (30.0, 20.0, 25.0)
    fine = ellipsoid_world((60, 60, 60), np.diag([1.5, 1.5, 1.5, 1.0]), centre, radii)
    coarse = ellipsoid_world((30, 30, 30), np.diag([3.0, 3.0, 3.0, 1.0]), centre, radii)
    truth = 4 / 3 * np.pi * np.prod(radii) / 1000  # 62.8 mL
    a = target_size_ml([fine], [voxel_volume_ml((1.5, 1.5, 1.5))]).S_ml
    b = target_size_ml([coarse], [voxel_volume_ml((3.0, 3.0, 3.0))]).S_ml
    assert a == pytest.approx(truth, rel=0.03) and b == pytest.approx(truth, rel=0.06)
    assert a == pytest.approx(b, rel=0.06)
    mixed = target_size_ml([fine, coarse], [0.003375, 0.027])
    assert mixed.S_ml == pytest.approx((a + b) / 2)


def _bar(n: int) -> np.ndarray:
    return np.ones((1, 1, n), np.uint8)


def test_outlier_support_dropped_from_five_on():
    sizes = [10, 11, 12, 13, 100]
    est = target_size_ml([_bar(n) for n in sizes], [1.0] * 5)
    assert est.dropped == (4,) and est.kept == (0, 1, 2, 3) and est.S_ml == pytest.approx(11.5)
    assert est.per_support_ml == tuple(float(s) for s in sizes) and "K=5" in est.method
    four = target_size_ml([_bar(n) for n in (10, 11, 12, 100)], [1.0] * 4)
    assert four.dropped == () and four.S_ml == pytest.approx(133 / 4)
    same = target_size_ml([_bar(7)] * 6, [2.0] * 6)  # std 0: nothing is an outlier
    assert same.kept == tuple(range(6)) and same.S_ml == 14.0
    with pytest.raises(InputError, match="no organ"):
        target_size_ml([_bar(3), np.zeros((2, 2, 2))], [1.0, 1.0])
    with pytest.raises(InputError, match="voxel volume"):
        target_size_ml([_bar(3)], [1.0, 2.0])


# --- query size estimator --------------------------------------------------------------------------


def _query(c=4, shape=(20, 18, 13), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((c, *shape)).astype(np.float16)  # an fp16 cache


def _adapters(c=4):
    torch.manual_seed(0)
    lp = build_adapter("lp", feature_size=c)
    sp = build_adapter("spatial", feature_size=c)
    with torch.no_grad():
        sp.conv2.weight.normal_(0, 0.2)  # not the identity, so the halo matters
    return {"lp": lp, "spatial": sp}


def _exact(adapter, feats, weight):
    return torch.sigmoid(adapter(*[torch.from_numpy(f.astype(np.float32))[None] for f in feats])).double().sum() * weight


@pytest.mark.parametrize("kind", ["lp", "spatial"])
def test_estimate_value_is_the_exact_sum_and_full_subset_gradient_is_exact(kind):
    feats = _query(shape=(12, 10, 9))
    adapter = _adapters()[kind]
    est = QuerySizeEstimator(feats, voxel_volume_ml=0.003375, chunk=(6, 4, 6), grad_chunks=2)
    assert est.n_chunks == 2 * 3 * 2  # uneven chunks at the far borders
    s = est(adapter)
    assert len(est.last_subset) == 2
    exact = _exact(adapter, [feats], 0.003375)
    assert s.item() == pytest.approx(exact.item(), rel=1e-6)
    assert est.exact_ml(adapter) == pytest.approx(exact.item(), rel=1e-6)
    if kind == "spatial":  # without its 2-voxel halo the chunked sum would be wrong at chunk seams
        no_halo = QuerySizeEstimator(feats, voxel_volume_ml=0.003375, chunk=(6, 4, 6), halo=0).exact_ml(adapter)
        assert abs(no_halo - exact.item()) > 1e-4 * exact.item()

    adapter.zero_grad()
    exact.backward()
    want = {n: p.grad.clone() for n, p in adapter.named_parameters()}
    adapter.zero_grad()
    est(adapter, subset="all").backward()
    for n, p in adapter.named_parameters():
        assert torch.allclose(p.grad, want[n].float(), rtol=1e-4, atol=1e-6), n

    # Unbiased: averaged over every single-chunk subset, the scaled gradients give the exact gradient.
    acc = {n: torch.zeros_like(p) for n, p in adapter.named_parameters()}
    for i in range(est.n_chunks):
        adapter.zero_grad()
        est(adapter, subset=[i]).backward()
        for n, p in adapter.named_parameters():
            acc[n] += p.grad / est.n_chunks
    for n, g in acc.items():
        assert torch.allclose(g, want[n].float(), rtol=1e-4, atol=1e-6), n


def test_pooled_features_count_eight_voxels_each():
    feats = _query(shape=(8, 8, 8))
    lp = _adapters()["lp"]
    a = QuerySizeEstimator(feats, voxel_volume_ml=0.003375, chunk=4).exact_ml(lp)
    b = QuerySizeEstimator(feats, voxel_volume_ml=0.003375, pool=2, chunk=4).exact_ml(lp)
    assert b == pytest.approx(8 * a, rel=1e-9)


def test_halo_is_required_when_undeclared_and_grids_must_nest():
    est = QuerySizeEstimator(_query(shape=(8, 8, 8)), voxel_volume_ml=1.0, chunk=4)
    with pytest.raises(InputError, match="halo"):
        est(torch.nn.Conv3d(4, 1, 1))
    assert QuerySizeEstimator(_query(shape=(8, 8, 8)), voxel_volume_ml=1.0, chunk=4, halo=0)(torch.nn.Conv3d(4, 1, 1)).ndim == 0
    with pytest.raises(InputError, match="nest"):
        QuerySizeEstimator((_query(shape=(8, 8, 8)), _query(shape=(4, 4, 3))), voxel_volume_ml=1.0)


def test_decoder_block_on_enc0_dec0():
    torch.manual_seed(1)
    block = build_adapter("decoder-block", feature_size=4)
    enc0, dec0 = _query(shape=(12, 12, 8)), _query(shape=(6, 6, 4), seed=1)
    one = QuerySizeEstimator((enc0, dec0), voxel_volume_ml=1.0, chunk=16)  # one chunk: the whole volume
    assert one.n_chunks == 1
    assert one.exact_ml(block) == pytest.approx(_exact(block, [enc0, dec0], 1.0).item(), rel=1e-6)
    chunked = QuerySizeEstimator((enc0, dec0), voxel_volume_ml=1.0, chunk=5)  # rounded up to 6 (even)
    assert chunked.chunk_size == (6, 6, 6) and chunked.n_chunks == 2 * 2 * 2
    s = chunked(block, subset="all")
    s.backward()
    assert torch.isfinite(s) and block.block.transp_conv.conv.weight.grad is not None


def test_adam_on_ti_loss_alone_shrinks_an_over_segmenting_probe():
    feats = _query(c=4, shape=(16, 16, 16))
    torch.manual_seed(2)
    lp = build_adapter("lp", feature_size=4)
    with torch.no_grad():
        lp.conv.weight.mul_(0.3)
        lp.conv.bias.fill_(3.0)  # predicts organ nearly everywhere
    est = QuerySizeEstimator(feats, voxel_volume_ml=1.0, chunk=8, grad_chunks=2, seed=0)
    S = 0.2 * 16**3  # the supports say the organ fills a fifth of the scan
    opt = torch.optim.Adam(lp.parameters(), lr=0.2)
    start = est.exact_ml(lp)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ti_loss(est(lp), S)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    end = est.exact_ml(lp)
    assert start > 0.9 * 16**3 and losses[0] > 2.0
    assert end < start and abs(end - S) < 0.5 * abs(start - S)
    assert ti_loss(torch.tensor(end), S).item() < 0.25 * losses[0]
