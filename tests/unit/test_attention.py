import pytest
import torch

from klear_lightning.models.attention import dense_flat, make_backend, plan_attention

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def naive_attention(q, k, v, q_valid, k_valid, q_group=None, k_group=None):
    """Independent formulation: explicit scores, masked softmax, zero rows that see nothing."""
    scale = q.shape[-1] ** -0.5
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * scale
    allowed = q_valid[:, :, None] & k_valid[:, None, :]
    if q_group is not None:
        allowed = allowed & (q_group[:, None] == k_group[None, :])
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v.double()).float()


def attend(name, q, k, v, q_valid, k_valid, q_group=None, k_group=None, layout="own"):
    """Run a backend on dense (B, N, H, D) tensors through a flat layout: ``own`` is the backend's
    model layout (packed: only the valid rows; dense: every row), ``all`` keeps every row."""
    backend = make_backend(name)
    keep_all = backend.dense or layout == "all"

    def flat(x, valid):
        rows = x.flatten(0, 1)
        if keep_all:
            return rows, dense_flat(valid)
        index = torch.full((valid.numel(),), -1, dtype=torch.long, device=valid.device)
        index[valid.flatten()] = torch.arange(int(valid.sum()), device=valid.device)
        return rows[valid.flatten()], index.view(valid.shape)

    (qf, q_map), (kf, k_map), (vf, _) = flat(q, q_valid), flat(k, k_valid), flat(v, k_valid)
    plan = plan_attention(q_valid, k_valid, q_group, k_group, dense=backend.dense, q_flat=q_map, k_flat=k_map)
    out = backend(qf, kf, vf, plan)
    if keep_all:
        return out.view(q.shape)
    return q.new_zeros(q.shape).index_put((q_valid,), out)


def mixed_case(seed: int = 0, d: int = 8):
    """Four streams-worth of tokens with padding, a fully absent group and two groups."""
    g = torch.Generator().manual_seed(seed)
    b, n, h = 4, 24, 2
    q, k, v = (torch.randn(b, n, h, d, generator=g) for _ in range(3))
    group = torch.tensor([0] * 14 + [1] * 10)
    valid = torch.rand(b, n, generator=g) > 0.25
    valid[1, 14:] = False  # sample 1: whole audio side absent (t2v)
    valid[2, :14] = False  # sample 2: whole video side absent (t2a)
    valid[3] = True
    return q, k, v, valid, group


@pytest.mark.parametrize("isolate", [False, True])
def test_reference_matches_naive_formula(isolate: bool):
    q, k, v, valid, group = mixed_case()
    groups = (group, group) if isolate else (None, None)
    out = attend("reference", q, k, v, valid, valid, *groups)
    torch.testing.assert_close(out, naive_attention(q, k, v, valid, valid, *groups), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()
    assert (out[~valid] == 0).all()


@pytest.mark.parametrize("layout", ["own", "all"])
@pytest.mark.parametrize("isolate", [False, True])
def test_packed_matches_reference_outputs_and_gradients(isolate: bool, layout: str):
    q, k, v, valid, group = mixed_case(1)
    groups = (group, group) if isolate else (None, None)
    results = []
    for name in ("reference", "packed"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = attend(name, *leaves, valid, valid, *groups, layout=layout)
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
        (out * weight).sum().backward()
        results.append((out, [t.grad for t in leaves]))
    (ref, ref_grads), (packed, packed_grads) = results
    torch.testing.assert_close(packed, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(packed_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["own", "all"])
def test_cross_attention_plan_with_a_sample_without_keys(layout: str):
    g = torch.Generator().manual_seed(2)
    q, k, v = (
        torch.randn(3, 5, 2, 4, generator=g),
        torch.randn(3, 7, 2, 4, generator=g),
        torch.randn(3, 7, 2, 4, generator=g),
    )
    q_valid = torch.ones(3, 5, dtype=torch.bool)
    k_valid = torch.rand(3, 7, generator=g) > 0.3
    k_valid[1] = False
    k_valid[0, 0] = True
    expected = naive_attention(q, k, v, q_valid, k_valid)
    for name in ("reference", "packed"):
        out = attend(name, q, k, v, q_valid, k_valid, layout=layout)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        assert (out[1] == 0).all()


def test_full_plan_needs_no_mask_and_packs_into_one_batched_call():
    q, k, v, _, _ = mixed_case()
    valid = torch.ones(q.shape[:2], dtype=torch.bool)
    plan = plan_attention(valid, valid)
    assert plan.full and plan.dense_mask is None
    assert plan_attention(valid, valid, dense=False).uniform
    expected = naive_attention(q, k, v, valid, valid)
    for name in ("reference", "packed"):
        torch.testing.assert_close(attend(name, q, k, v, valid, valid), expected, atol=1e-5, rtol=1e-5)


def test_plan_errors():
    valid = torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="non-decreasing"):
        plan_attention(valid, valid, torch.tensor([1, 0, 1]), torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="both"):
        plan_attention(valid, valid, torch.tensor([0, 0, 1]), None)
    with pytest.raises(ValueError, match="attention_backend"):
        make_backend("ring")
    partial = torch.tensor([[0, -1, 1]])
    with pytest.raises(ValueError, match="dense attention plan needs every token"):
        plan_attention(valid, valid, dense=True, q_flat=partial, k_flat=partial)
    with pytest.raises(ValueError, match="packed attention plan needs every valid token"):
        plan_attention(valid, valid, dense=False, q_flat=partial, k_flat=partial)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
@pytest.mark.parametrize("name", ["flash", "flex", "xformers"])
def test_cuda_backends_fail_clearly_without_a_gpu(name: str):
    with pytest.raises(RuntimeError, match="CUDA"):
        make_backend(name)


def _require_xformers_kernels() -> None:
    xops = pytest.importorskip("xformers.ops")
    x = torch.zeros(1, 8, 1, 64, device="cuda", dtype=torch.bfloat16)
    try:
        xops.memory_efficient_attention(x, x, x)
    except NotImplementedError as e:
        pytest.skip(f"xformers is installed but has no kernel for this torch/CUDA build: {str(e).splitlines()[0]}")


@CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("name", ["flash", "flex", "xformers"])
@pytest.mark.parametrize("isolate", [False, True])
def test_cuda_backends_match_reference(name: str, isolate: bool):
    if name == "xformers":
        _require_xformers_kernels()
    q, k, v, valid, group = mixed_case(3, d=64)
    q, k, v = (t.cuda().to(torch.bfloat16).requires_grad_() for t in (q, k, v))
    valid, group = valid.cuda(), group.cuda()
    groups = (group, group) if isolate else (None, None)
    ref = attend("reference", q, k, v, valid, valid, *groups)
    ref_grads = torch.autograd.grad(ref.float().square().sum(), (q, k, v))
    out = attend(name, q, k, v, valid, valid, *groups)
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a.float(), b.float(), atol=5e-2, rtol=5e-2)
