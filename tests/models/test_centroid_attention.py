"""Centroid attention against references written straight from the formula (docs/operator.md §1–§3)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from models.centroid_attention import CentroidAttention, CentroidAttentionBlock, hard_assignment
from models.ops import TRITON, knn

#: Every way a step runs: the formula, and each per-pair kernel of models.pairs.
KERNELS = ["reference", "auto", "gathered", "chunked", "csr",
           pytest.param("triton", marks=pytest.mark.skipif(not TRITON, reason="Triton is not installed"))]

B, M, N, C, H, K = 2, 5, 11, 8, 2, 4


def _inputs(seed: int, dtype: torch.dtype = torch.float64, m: int = M, n: int = N, c_in: int = C):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, m, C, generator=g, dtype=dtype)
    x = torch.randn(B, n, c_in, generator=g, dtype=dtype)
    pos_u, pos_x = torch.rand(B, m, 3, generator=g, dtype=dtype), torch.rand(B, n, 3, generator=g, dtype=dtype)
    return u, x, pos_u, pos_x, knn(pos_u, pos_x, K)


def _lin(layer: nn.Linear, v: Tensor) -> Tensor:
    return layer.weight @ v + layer.bias


def _reference(
    attn: CentroidAttention, u, x, pos_u, pos_x, neighbors, clustering_norm: bool = False
) -> tuple[Tensor, Tensor]:
    """Loops over batch, centroid i, head and input j: a_ij = softmax_j(q_i·k_ij/√d), out_i = W_o Σ_j a_ij v_ij.

    Returns the output [B, M, C] and the weights [B, h, M, J] (J = K local, N global).
    """
    h, d = attn.heads, attn.head_dim
    out = torch.zeros(B, u.shape[1], C, dtype=u.dtype)
    local = attn.mode == "local"
    J = neighbors.shape[-1] if local else x.shape[1]
    logits = torch.zeros(B, h, u.shape[1], J, dtype=u.dtype)
    values = torch.zeros(B, u.shape[1], J, C, dtype=u.dtype)
    for b in range(B):
        for i in range(u.shape[1]):
            q = _lin(attn.to_q, u[b, i])
            for jj in range(J):
                j = int(neighbors[b, i, jj]) if local else jj
                k, v = _lin(attn.to_k, x[b, j]), _lin(attn.to_v, x[b, j])
                if attn.pos_mlp is not None:  # δ_ij = W2 relu(W1 (p_j − p_i) + b1) + b2
                    r = pos_x[b, j] - pos_u[b, i]
                    delta = _lin(attn.pos_mlp[2], torch.relu(_lin(attn.pos_mlp[0], r)))
                    k, v = k + delta, v + delta
                values[b, i, jj] = v
                for head in range(h):
                    s = slice(head * d, (head + 1) * d)
                    logits[b, head, i, jj] = q[s] @ k[s] / math.sqrt(d)
    if not clustering_norm:
        a = logits.softmax(-1)
    else:  # softmax over the centroids that see input j, then renormalise over j
        a = torch.zeros_like(logits)
        for b in range(B):
            for head in range(h):
                for i in range(u.shape[1]):
                    for jj in range(J):
                        j = int(neighbors[b, i, jj]) if local else jj
                        rivals = [
                            logits[b, head, i2, jj2]
                            for i2 in range(u.shape[1])
                            for jj2 in range(J)
                            if (int(neighbors[b, i2, jj2]) if local else jj2) == j
                        ]
                        a[b, head, i, jj] = logits[b, head, i, jj].exp() / torch.stack(rivals).exp().sum()
        a = a / a.sum(-1, keepdim=True)
    for b in range(B):
        for i in range(u.shape[1]):
            mixed = torch.cat([(a[b, head, i, :, None] * values[b, i, :, head * d : (head + 1) * d]).sum(0)
                               for head in range(h)])
            out[b, i] = _lin(attn.to_out, mixed)
    return out, a


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial values for every parameter (LayerNorm weights too), so that no term hides."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return module


@pytest.mark.parametrize("mode", ["local", "global"])
@pytest.mark.parametrize("pos_encoding", [True, False])
@pytest.mark.parametrize("kernel", KERNELS)
def test_step_equals_formula_float64(mode: str, pos_encoding: bool, kernel: str) -> None:
    attn = _randomise(CentroidAttention(C, H, mode, pos_encoding, kv_dim=6, kernel=kernel).double(), 0)
    u, x, pos_u, pos_x, nbr = _inputs(10, c_in=6)
    out, weights = attn(u, x, pos_u, pos_x, nbr, return_attention=True)
    fast, none = attn(u, x, pos_u, pos_x, nbr)
    ref_out, ref_a = _reference(attn, u, x, pos_u, pos_x, nbr)
    assert none is None
    assert weights.shape == ((B, H, M, K) if mode == "local" else (B, H, M, N))
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(fast, ref_out, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(weights, ref_a, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("mode, pos_encoding", [("local", True), ("global", True), ("global", False)])
def test_clustering_norm_equals_formula(mode: str, pos_encoding: bool) -> None:
    attn = _randomise(CentroidAttention(C, H, mode, pos_encoding, clustering_norm=True).double(), 1)
    u, x, pos_u, pos_x, nbr = _inputs(11)
    out, weights = attn(u, x, pos_u, pos_x, nbr, return_attention=True)
    ref_out, ref_a = _reference(attn, u, x, pos_u, pos_x, nbr, clustering_norm=True)
    torch.testing.assert_close(weights, ref_a, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, M, dtype=torch.float64))
    plain, _ = _randomise(CentroidAttention(C, H, mode, pos_encoding).double(), 1)(u, x, pos_u, pos_x, nbr)
    assert not torch.allclose(out, plain)  # the option changes the maths


@pytest.mark.parametrize("mode, pos_encoding", [("local", True), ("global", True), ("global", False)])
def test_sdpa_path_equals_reference_path(mode: str, pos_encoding: bool) -> None:
    fast = CentroidAttention(C, H, mode, pos_encoding)
    ref = CentroidAttention(C, H, mode, pos_encoding, kernel="reference")
    ref.load_state_dict(fast.state_dict())
    u, x, pos_u, pos_x, nbr = _inputs(12, torch.float32)
    torch.testing.assert_close(fast(u, x, pos_u, pos_x, nbr)[0], ref(u, x, pos_u, pos_x, nbr)[0], rtol=1e-5, atol=1e-6)


def test_m_equals_n_one_global_step_is_multihead_self_attention() -> None:
    attn = CentroidAttention(C, H, "global", pos_encoding=False).double()
    mha = nn.MultiheadAttention(C, H, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight]))
        mha.in_proj_bias.copy_(torch.cat([attn.to_q.bias, attn.to_k.bias, attn.to_v.bias]))
        mha.out_proj.weight.copy_(attn.to_out.weight)
        mha.out_proj.bias.copy_(attn.to_out.bias)
    x = _inputs(13)[1]
    out, weights = attn(x, x, return_attention=True)
    ref, ref_w = mha(x, x, x, average_attn_weights=False)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(weights, ref_w, rtol=1e-10, atol=1e-12)


def test_block_with_t1_global_is_a_pre_norm_transformer_layer() -> None:
    block = CentroidAttentionBlock(C, H, steps=1, ffn_ratio=2.0, mode="global", pos_encoding=False)
    block = _randomise(block.double(), 2)
    layer = nn.TransformerEncoderLayer(C, H, 2 * C, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
    layer = layer.double().eval()
    with torch.no_grad():  # the block's two input norms both play the layer's norm1
        block.norm_x.load_state_dict(block.norm_u.state_dict())
        a = block.attn
        layer.self_attn.in_proj_weight.copy_(torch.cat([a.to_q.weight, a.to_k.weight, a.to_v.weight]))
        layer.self_attn.in_proj_bias.copy_(torch.cat([a.to_q.bias, a.to_k.bias, a.to_v.bias]))
        layer.self_attn.out_proj.load_state_dict(a.to_out.state_dict())
        layer.norm1.load_state_dict(block.norm_u.state_dict())
        layer.norm2.load_state_dict(block.norm_ffn.state_dict())
        layer.linear1.load_state_dict(block.ffn[0].state_dict())
        layer.linear2.load_state_dict(block.ffn[3].state_dict())
    x = _inputs(14)[1]
    torch.testing.assert_close(block(x, x)[0], layer(x), rtol=1e-10, atol=1e-10)


def test_steps_share_weights_and_unroll() -> None:
    one = _randomise(CentroidAttentionBlock(C, H, steps=1, kv_dim=6).double(), 3)
    three = CentroidAttentionBlock(C, H, steps=3, kv_dim=6).double()
    three.load_state_dict(one.state_dict())  # same parameters whatever T is
    u, x, pos_u, pos_x, nbr = _inputs(15, c_in=6)
    manual = u
    for _ in range(3):  # T steps with the inputs held fixed
        update, _ = one.attn(one.norm_u(manual), one.norm_x(x), pos_u, pos_x, nbr)
        manual = manual + update
        manual = manual + one.ffn(one.norm_ffn(manual))
    out, weights = three(u, x, pos_u, pos_x, nbr, return_attention=True)
    torch.testing.assert_close(out, manual, rtol=1e-10, atol=1e-10)
    assert weights.shape == (B, H, M, K)


def test_block_gradients_reach_every_parameter() -> None:
    block = CentroidAttentionBlock(C, H, steps=2, kv_dim=6)
    u, x, pos_u, pos_x, nbr = _inputs(16, torch.float32, c_in=6)
    u.requires_grad_(True)
    block(u, x, pos_u, pos_x, nbr)[0].square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert torch.isfinite(u.grad).all()


def test_hard_assignment() -> None:
    # one batch, one head, 2 centroids with 2 neighbours each among 4 inputs; input 3 is seen by nobody
    weights = torch.tensor([[[[0.7, 0.3], [0.6, 0.4]]]])  # (1, 1, 2, 2)
    index = torch.tensor([[[0, 1], [1, 2]]])  # centroid 0 sees inputs 0, 1; centroid 1 sees 1, 2
    assert hard_assignment(weights, index, 4).tolist() == [[0, 1, 1, -1]]  # input 1: 0.3 < 0.6
    dense = torch.tensor([[[[0.2, 0.9], [0.8, 0.1]]]])  # global: (1, 1, M=2, N=2)
    assert hard_assignment(dense, None, 2).tolist() == [[1, 0]]


def test_errors_and_repr() -> None:
    with pytest.raises(ValueError, match="divisible"):
        CentroidAttention(10, 3)
    with pytest.raises(ValueError, match="mode"):
        CentroidAttention(8, 2, mode="nearby")
    u, x, pos_u, pos_x, _ = _inputs(17, torch.float32)
    with pytest.raises(ValueError, match="neighbors"):
        CentroidAttention(C, H)(u, x, pos_u, pos_x)
    with pytest.raises(ValueError, match="pos_u"):
        CentroidAttention(C, H, mode="global")(u, x)
    assert "mode=local" in repr(CentroidAttention(C, H)) and "steps=2" in repr(CentroidAttentionBlock(C, H))


@pytest.mark.parametrize("mode, pos_encoding", [("local", True), ("local", False), ("global", True)])
def test_chunked_fast_path_equals_reference(mode: str, pos_encoding: bool) -> None:
    """Chunking B·M (GPU launch limits) changes nothing: forced to 3 rows per launch on CPU, float64."""
    ref = _randomise(CentroidAttention(C, H, mode, pos_encoding, kv_dim=6, kernel="reference").double(), 20)
    chunked = CentroidAttention(C, H, mode, pos_encoding, kv_dim=6, max_rows=3).double()
    chunked.load_state_dict(ref.state_dict())
    u, x, pos_u, pos_x, nbr = _inputs(21, c_in=6)
    out, weights = chunked(u, x, pos_u, pos_x, nbr, return_attention=True)
    ref_out, ref_w = ref(u, x, pos_u, pos_x, nbr, return_attention=True)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(weights, ref_w, rtol=1e-10, atol=1e-12)


def test_position_code_factorisation_with_dropout_keeps_the_bias_term(monkeypatch: pytest.MonkeyPatch) -> None:
    """Σ_j a'_ij (v_j + δ_ij) with dropped-out weights a' (which no longer sum to 1): fast = reference.

    The two paths hold the weights in different layouts, so dropout is replaced by a mask that depends on
    each weight's value only (the same entries drop in both).
    """

    def value_mask_dropout(w: Tensor, p: float) -> Tensor:
        return torch.where((w * 1e4).frac() < p, torch.zeros_like(w), w / (1 - p))

    monkeypatch.setattr(torch.nn.functional, "dropout", value_mask_dropout)
    fast = _randomise(CentroidAttention(C, H, dropout=0.5).double(), 22).train()
    ref = CentroidAttention(C, H, dropout=0.5, kernel="reference").double().train()
    ref.load_state_dict(fast.state_dict())
    u, x, pos_u, pos_x, nbr = _inputs(23)
    a, b = fast(u, x, pos_u, pos_x, nbr)[0], ref(u, x, pos_u, pos_x, nbr)[0]
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    fast.eval()
    assert not torch.allclose(a, fast(u, x, pos_u, pos_x, nbr)[0])  # the mask did drop something


@pytest.mark.parametrize("mode, pos_encoding, clustering_norm, kernel", [
    ("local", True, False, "auto"), ("local", True, True, "auto"), ("local", False, False, "reference"),
    ("local", True, False, "gathered"), ("local", True, False, "chunked"),
    ("global", True, False, "auto"), ("global", False, False, "auto"), ("global", False, True, "auto"),
])
def test_every_path_runs_under_bf16_autocast_on_cpu(
    mode: str, pos_encoding: bool, clustering_norm: bool, kernel: str
) -> None:
    block = CentroidAttentionBlock(C, H, mode=mode, pos_encoding=pos_encoding, clustering_norm=clustering_norm,
                                   kv_dim=6, kernel=kernel)
    u, x, pos_u, pos_x, nbr = _inputs(24, torch.float32, c_in=6)
    full, _ = block(u, x, pos_u, pos_x, nbr)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half, weights = block(u, x, pos_u, pos_x, nbr, return_attention=True)
    assert torch.isfinite(half).all() and torch.isfinite(weights).all()
    torch.testing.assert_close(half.float(), full, rtol=0.1, atol=0.1)  # bf16 keeps ~3 significant digits
    half.float().square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())


def test_layer_scale_zero_starts_the_block_at_its_input() -> None:
    block = CentroidAttentionBlock(C, H, steps=2, kv_dim=6, layer_scale=0.0)
    u, x, pos_u, pos_x, nbr = _inputs(25, torch.float32, c_in=6)
    out, _ = block(u, x, pos_u, pos_x, nbr)
    torch.testing.assert_close(out, u)  # every residual branch starts at zero
    out.square().sum().backward()
    assert block.gamma_attn.grad.abs().sum() > 0 and block.gamma_ffn.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="max_rows"):
        CentroidAttention(C, H, max_rows=0)
    with pytest.raises(ValueError, match="unknown attention kernel 'sparse'"):
        CentroidAttention(C, H, kernel="sparse")


def test_ffn_ratio_zero_leaves_the_feed_forward_branch_out() -> None:
    """``ffn_ratio=0`` (the backbone configs'): each step is u ← u + γ_a ⊙ attention, exactly the block with FFN
    whose feed-forward branch outputs zero; no FFN parameters; a negative ratio is refused."""
    torch.manual_seed(0)
    bare = CentroidAttentionBlock(C, H, steps=2, ffn_ratio=0, kv_dim=6, layer_scale=0.5)
    full = CentroidAttentionBlock(C, H, steps=2, ffn_ratio=2, kv_dim=6, layer_scale=0.5)
    assert bare.ffn is None and bare.norm_ffn is None and bare.gamma_ffn is None
    full.load_state_dict(bare.state_dict(), strict=False)
    with torch.no_grad():
        full.ffn[3].weight.zero_()
        full.ffn[3].bias.zero_()
    u, x, pos_u, pos_x, nbr = _inputs(27, torch.float32, c_in=6)
    torch.testing.assert_close(bare(u, x, pos_u, pos_x, nbr)[0], full(u, x, pos_u, pos_x, nbr)[0])
    with pytest.raises(ValueError, match="ffn_ratio=-1"):
        CentroidAttentionBlock(C, H, ffn_ratio=-1)


def test_the_gathered_kernel_shows_the_counter_every_product_of_the_formula() -> None:
    """FLOP counting runs the gathered kernel: its q·k and Σ a·v products are einsums the counter sees, as many
    FLOPs as the reference's (2 per multiply-accumulate); the chunked kernel's custom operator hides them."""
    from torch.utils.flop_counter import FlopCounterMode

    u, x, pos_u, pos_x, nbr = _inputs(26, torch.float32)
    counts = {}
    for kernel in ("gathered", "reference", "chunked"):
        with FlopCounterMode(display=False) as counter:
            CentroidAttention(C, H, pos_encoding=False, kernel=kernel)(u, x, pos_u, pos_x, nbr)
        counts[kernel] = counter.get_total_flops()
    assert counts["gathered"] == counts["reference"] == counts["chunked"] + 2 * 2 * B * M * K * C
