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
"""

from __future__ import annotations

import torch
from torch import nn

from edge_inspector.model.blur import blur, gaussian_kernel


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
        """Set by ``quantize_precision_factor``: the INT8 codes and scales a QDQ graph stores."""

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
        self.factor_codes = None

    @torch.no_grad()
    def quantize_precision_factor(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Round the precision factors to INT8 with one symmetric scale per (cell, output column), in place.

        Returns (codes int8 (cells, dims, dims), scales (cells, 1, dims)): what the QDQ graph stores (weight-only:
        ONNX Runtime dequantizes it once). The head then computes exactly what that graph computes.
        """
        factor = self.cell_precision_factor
        scales = (factor.abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-30)
        codes = torch.round(factor / scales).clamp(-127, 127)
        self.cell_precision_factor.copy_(codes * scales)
        self.factor_codes = (codes.to(torch.int8), scales)
        return self.factor_codes

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, _, h, w = features.shape
        y = self.project(features).reshape(b, self.dims, h * w).permute(2, 0, 1)  # (cells, B, dims)
        whitened = torch.matmul(y - self.cell_mean, self.cell_precision_factor)
        distance = whitened.square().sum(dim=2).clamp_min(0).sqrt()  # (cells, B)
        return blur(distance.transpose(0, 1).reshape(b, 1, h, w), self.blur_kernel)
