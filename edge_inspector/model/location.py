"""Location head: a Gaussian of the normal backbone features at every cell of a coarse grid (fitted, not trained).

Why it exists: a camera over a fixtured line sees each part in the same place, so what is normal depends on where
in the frame a feature sits (a tile edge is normal at the border, a defect in the middle). HaloAE's convolutions
and relative-position attention are translation-equivariant: its reconstruction error cannot tell a feature that
is normal *somewhere* from one that is normal *here*. On magnetic_tile (benchmarks/README.md, "Why a location
head") a Gaussian per cell reaches image AUROC 0.93 on the features where one Gaussian shared by all cells reaches
0.74 and HaloAE's reconstruction error 0.76; a location-blind patch nearest-neighbour search gets 0.90, but needs
a memory of 60k feature vectors (23M floats) where the head holds 1M.

The head, fitted once on the training images (closed form, seconds):

    backbone layers -> pooled to a (h, w) grid -> per-channel standardisation -> global PCA to ``dims``   (1x1 conv)
    -> per cell: Mahalanobis distance to that cell's normal mean under its own (shrunk) covariance        (MatMul)

Stored as the 1x1 projection (dims, C), the cell means (h*w, 1, dims) and the Cholesky factors of the cell
precisions (h*w, dims, dims), so the graph is Conv -> Reshape/Transpose -> Sub -> MatMul -> ReduceSum -> Sqrt.

Quantized (``quantize``, HQS stage 2): the factors become INT8 codes with one scale per (cell, output column) and the
centred features one 8-bit per-tensor grid, so the MatMul runs as an integer matmul (ONNX Runtime:
``MatMulInteger``, rewritten at load by ``engines.ort_rewrites``). Why: the factors are 4 MB in float and the rest of
the network evicts them from cache, so the float MatMul reads them from memory on every image: 0.3 ms of a 3.9 ms
HQS image at 2 threads, 0.12 ms as an integer matmul over 1 MB (``calibration/README.md``, numerics).
"""

from __future__ import annotations

import torch
from torch import nn

from edge_inspector.model.blur import blur, gaussian_kernel

FACTOR_QMAX = 63
"""Largest INT8 code of the precision factors: the reduced range of the 8-bit conv weights
(``quantization.fakequant``), for the same reason: ONNX Runtime's uint8 x int8 kernels on x86 without VNNI
saturate 16-bit pair sums above 64."""
INPUT_QMIN, INPUT_QMAX = -128, 127
"""Codes of the centred features' grid (the signed 8-bit activation grid of ``quantization.fakequant``)."""
INPUT_RANGE_MARGIN = 2.0
"""The centred features' grid covers this many times their largest magnitude on the fit images: a defect's
features lie further out than any normal one, and a clipped deviation would lower its distance. On magnetic_tile
(test split, HQS plan) margins 1, 2 and 4 all kept image / pixel AUROC within 0.1 point of the float-input head."""


class LocationGaussian(nn.Module):
    """Per-cell Gaussian of a (B, C, h, w) feature grid; ``forward`` gives the (B, 1, h, w) Mahalanobis distance.

    Args:
        channels: C of the feature grid.
        grid: (h, w) of the feature grid.
        dims: PCA components kept (at most C).
        shrinkage: added to each cell covariance's diagonal, in units of the standardised feature variance; keeps
            the inverse stable when a cell has fewer images than dimensions.
        blur_sigma: Gaussian smoothing of the distance map, in grid cells (0 = off).
    """

    def __init__(self, channels: int, grid: tuple[int, int], dims: int, shrinkage: float, blur_sigma: float):
        super().__init__()
        dims = min(dims, channels)
        cells = grid[0] * grid[1]
        self.grid, self.dims, self.shrinkage = grid, dims, shrinkage
        self.project = nn.Conv2d(channels, dims, 1)
        self.project.requires_grad_(False)
        self.register_buffer("cell_mean", torch.zeros(cells, 1, dims))
        self.register_buffer("cell_precision_factor", torch.eye(dims).expand(cells, dims, dims).clone())
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("blur_kernel", gaussian_kernel(blur_sigma))
        self.factor_codes: tuple[torch.Tensor, torch.Tensor] | None = None
        """Set by ``quantize``: the INT8 codes and scales a QDQ graph stores."""
        self.input_scale: float | None = None
        """Set by ``quantize``: the step of the centred features' 8-bit grid."""
        self.quantize_input = False
        """Whether ``forward`` snaps the centred features to that grid (``quantization.units.set_mode`` turns it on
        in ``quant`` mode, so the float export stays a plain Sub -> MatMul for the QDQ rewrite)."""
        self.fit_input_absmax: float | None = None
        """Largest |features - cell mean| over the images of the last ``fit`` (the input grid's range)."""

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        """Fit on (N, C, h, w) normal feature grids (N >= 2), in float64."""
        n, c, h, w = features.shape
        if (h, w) != self.grid or n < 2:
            raise ValueError(f"location head needs >= 2 feature grids of {self.grid}, got {tuple(features.shape)}")
        x = features.double().permute(0, 2, 3, 1).reshape(-1, c)
        mean, std = x.mean(0), x.std(0)
        std = std.clamp_min(1e-2 * float(std.mean()) + 1e-12)  # a dead channel must not turn noise into signal
        z = (x - mean) / std
        eigenvalues, eigenvectors = torch.linalg.eigh(z.T @ z / len(z))
        components = eigenvectors[:, -self.dims :]  # (C, dims), largest variance last
        # Fold standardisation and projection into one 1x1 conv: y = components^T (f - mean) / std.
        weight = (components / std[:, None]).T
        self.project.weight.copy_(weight.view(self.dims, c, 1, 1).float())
        self.project.bias.copy_((-weight @ mean).float())
        cells = (z @ components).reshape(n, h * w, self.dims).transpose(0, 1)  # (cells, N, dims)
        cell_mean = cells.mean(1, keepdim=True)
        centred = cells - cell_mean
        covariance = centred.transpose(1, 2) @ centred / (n - 1)
        covariance += self.shrinkage * torch.eye(self.dims, dtype=torch.float64)
        # precision = L L^T, so the squared distance is |(y - mean) @ L|^2
        precision = torch.cholesky_inverse(torch.linalg.cholesky(covariance))
        self.cell_precision_factor.copy_(torch.linalg.cholesky(precision).float())
        self.cell_mean.copy_(cell_mean.float())
        self.fitted.fill_(True)
        self.fit_input_absmax = float(centred.abs().max())
        self.factor_codes, self.input_scale = None, None

    @torch.no_grad()
    def quantize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Round the precision factors to INT8 (codes -63..63, one symmetric scale per (cell, output column)) in
        place, and set the centred features' 8-bit grid from the last ``fit``.

        Returns (codes int8 (cells, dims, dims), scales (cells, 1, dims)): what the QDQ graph stores. With
        ``quantize_input`` on, the head then computes what that graph computes.
        """
        if self.fit_input_absmax is None:
            raise ValueError("quantize needs the ranges of a fit: call fit first")
        factor = self.cell_precision_factor
        scales = (factor.abs().amax(dim=1, keepdim=True) / FACTOR_QMAX).clamp_min(1e-30)
        codes = torch.round(factor / scales).clamp(-FACTOR_QMAX, FACTOR_QMAX)
        self.cell_precision_factor.copy_(codes * scales)
        self.factor_codes = (codes.to(torch.int8), scales)
        self.input_scale = max(self.fit_input_absmax, 1e-12) * INPUT_RANGE_MARGIN / INPUT_QMAX
        return self.factor_codes

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, _, h, w = features.shape
        y = self.project(features).reshape(b, self.dims, h * w).permute(2, 0, 1)  # (cells, B, dims)
        centred = y - self.cell_mean
        if self.quantize_input and self.input_scale is not None:
            centred = torch.clamp(torch.round(centred / self.input_scale), INPUT_QMIN, INPUT_QMAX) * self.input_scale
        whitened = torch.matmul(centred, self.cell_precision_factor)
        distance = whitened.square().sum(dim=2).clamp_min(0).sqrt()  # (cells, B)
        return blur(distance.transpose(0, 1).reshape(b, 1, h, w), self.blur_kernel)
