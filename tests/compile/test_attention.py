"""Halo attention against a plain per-pixel loop, its padding mask, gradients, ONNX export and the block_mean ablation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_inspector.model.attention import BlockMeanAttention, HaloAttention, check_tiling, padding_mask


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def reference_attention(att: HaloAttention, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Straightforward loop: each pixel attends to the in-map keys of its block's window, nothing else.

    Returns the output and, for checking, the attention weights of every query over its full window (padding = 0).
    """
    b, _, h, w = x.shape
    nh, d, bs, halo = att.heads, att.head_dim, att.block, att.halo
    q = att.to_q(x).reshape(b, nh, d, h, w) * d**-0.5
    k = att.to_k(x).reshape(b, nh, d, h, w)
    v = att.to_v(x).reshape(b, nh, d, h, w)
    out = torch.zeros(b, nh, d, h, w, dtype=torch.float64)
    weights = {}
    for bi in range(b):
        for hi in range(nh):
            for y in range(h):
                for xq in range(w):
                    y0, x0 = (y // bs) * bs - halo, (xq // bs) * bs - halo
                    logits, values, cells = [], [], []
                    for ky in range(y0, y0 + bs + 2 * halo):
                        for kx in range(x0, x0 + bs + 2 * halo):
                            if not (0 <= ky < h and 0 <= kx < w):
                                continue
                            dy, dx = ky - y, kx - xq
                            r = att.rel_height[dy + bs + halo - 1] + att.rel_width[dx + bs + halo - 1]
                            qv = q[bi, hi, :, y, xq].double()
                            logits.append(qv @ k[bi, hi, :, ky, kx].double() + qv @ r.double())
                            values.append(v[bi, hi, :, ky, kx].double())
                            cells.append((ky, kx))
                    p = torch.softmax(torch.stack(logits), 0)
                    out[bi, hi, :, y, xq] = (p[:, None] * torch.stack(values)).sum(0)
                    weights[(bi, hi, y, xq)] = dict(zip(cells, p.tolist()))
    out = out.reshape(b, nh * d, h, w).float()
    return att.to_out(out), weights


@pytest.mark.parametrize(
    "channels,heads,head_dim,block,halo,h,w",
    [(8, 2, 4, 4, 1, 8, 8), (6, 1, 8, 4, 2, 8, 12), (5, 3, 2, 2, 1, 6, 4), (4, 2, 4, 4, 0, 4, 8)],
)
def test_matches_loop_reference(channels, heads, head_dim, block, halo, h, w):
    att = HaloAttention(channels, heads, head_dim, block, halo)
    x = torch.randn(2, channels, h, w)
    with torch.no_grad():
        got = att(x)
        want, _ = reference_attention(att, x)
    assert got.shape == x.shape
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_padding_keys_get_no_weight():
    """Keys in the zero padding get (numerically) zero weight; every in-map key of the window gets some."""
    att = HaloAttention(4, 2, 4, 4, 2)
    x = torch.randn(1, 4, 8, 12) * 3
    with torch.no_grad():
        attn, _ = att.weights(x)  # (heads, blocks, Q, K)
    mask = padding_mask(8, 12, 4, 2)  # (blocks, K)
    padded = (mask < 0).reshape(1, 6, 1, 64).expand_as(attn)
    assert padded.any() and (~padded).any()
    assert attn[padded].max() < 1e-30
    assert attn[~padded].min() > 0
    assert torch.allclose(attn.sum(-1), torch.ones(()))
    # corner block: window rows/cols -2..5, of which 0..5 are inside -> 36 of 64 keys are real
    assert int((mask[0] == 0).sum()) == 36


def test_gradients_reach_q_k_and_relative_positions():
    att = HaloAttention(6, 2, 4, 4, 2)
    x = torch.randn(2, 6, 8, 8)
    att(x).square().mean().backward()
    for param in (att.to_q.weight, att.to_k.weight, att.to_v.weight, att.rel_height, att.rel_width):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_rejects_maps_the_blocks_cannot_tile():
    att = HaloAttention(4, 1, 4, 4, 1)
    with pytest.raises(ValueError, match="not tiled"):
        att(torch.randn(1, 4, 6, 8))
    with pytest.raises(ValueError, match="halo"):
        check_tiling(8, 8, 4, 3)


def test_block_mean_reproduces_the_official_inverted_mask():
    """Interior block -> window mean of v, then to_out; border block -> to_out bias only."""
    att = BlockMeanAttention(3, 2, 2, 4, 2)
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        out = att(x)
        v = att.to_v(x)
        mean = v[:, :, 2:10, 2:10].mean(dim=(2, 3), keepdim=True)  # middle block (4..8) with halo 2
        want_mid = att.to_out(mean)
        bias = att.to_out.bias.view(1, -1, 1, 1)
    assert torch.allclose(out[:, :, 4:8, 4:8], want_mid.expand(1, 3, 4, 4), atol=1e-6)
    assert torch.allclose(out[:, :, 0:4, :], bias.expand(1, 3, 4, 12), atol=1e-6)


def test_exports_to_onnx_and_runtime_matches(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    att = HaloAttention(8, 2, 4, 4, 2).eval()
    x = torch.randn(1, 8, 8, 12)
    path = tmp_path / "attention.onnx"
    torch.onnx.export(att, (x,), str(path), input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    graph = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph.node}
    assert not ops & {"Einsum", "Im2Col", "Col2Im"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = att(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
