"""The numba kernel behind :mod:`voxelopt.compiled` (imported only there, and only when numba is
installed). Compiled on first use per pixel type and cached on disk by numba (``cache=True``)."""

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def warp_rows(source, e, x_lo, x_hi, x_w, y_lo, y_hi, y_w, z_lo, z_hi, z_w, to_moving, offset,
              start_z, start_y, start_x, out, default, nearest, integer, low, high,
              row_start, row_stop):  # pragma: no cover - compiled; tested through voxelopt.compiled
    """Warp rows ``row_start .. row_stop - 1`` of ``out`` (z, y, x; rows are its flattened (z, y)),
    whose voxel (0, 0, 0) is the fixed-grid voxel (``start_z``, ``start_y``, ``start_x``).

    Per fixed voxel (i, j, k): the field ``e`` (3, fz, fy, fx; moving-index units, channels i,
    j, k) trilinear at field index (x_*[i], y_*[j], z_*[k]) (each axis: lower index, upper
    index, weight), first interpolated over (j, k) for a whole row; the moving index
    ``q = to_moving @ (i, j, k) + offset + e``; ``source`` (Z, Y, X) at ``q`` with ITK's rules
    (see :func:`voxelopt.compiled.warp_slab`).
    """
    size_x, size_y, size_z = source.shape[2], source.shape[1], source.shape[0]
    ny, nx = out.shape[1], out.shape[2]
    field_x = e.shape[3]
    row_field = np.empty((3, field_x))
    for row in range(row_start, row_stop):
        zl = row // ny
        yl = row - zl * ny
        k = start_z + zl
        j = start_y + yl
        ka, kb, wk = z_lo[k], z_hi[k], z_w[k]
        ja, jb, wj = y_lo[j], y_hi[j], y_w[j]
        for c in range(3):  # the field along this row's field columns, bilinear over (j, k)
            for f in range(field_x):
                a = e[c, ka, ja, f] + wj * (e[c, ka, jb, f] - e[c, ka, ja, f])
                b = e[c, kb, ja, f] + wj * (e[c, kb, jb, f] - e[c, kb, ja, f])
                row_field[c, f] = a + wk * (b - a)
        base_i = to_moving[0, 1] * j + to_moving[0, 2] * k + offset[0]
        base_j = to_moving[1, 1] * j + to_moving[1, 2] * k + offset[1]
        base_k = to_moving[2, 1] * j + to_moving[2, 2] * k + offset[2]
        for xl in range(nx):
            i = start_x + xl
            fa, fb, wi = x_lo[i], x_hi[i], x_w[i]
            qi = base_i + to_moving[0, 0] * i + row_field[0, fa] + wi * (row_field[0, fb] - row_field[0, fa])
            qj = base_j + to_moving[1, 0] * i + row_field[1, fa] + wi * (row_field[1, fb] - row_field[1, fa])
            qk = base_k + to_moving[2, 0] * i + row_field[2, fa] + wi * (row_field[2, fb] - row_field[2, fa])
            if qi < -0.5 or qj < -0.5 or qk < -0.5 or qi > size_x - 0.5 or qj > size_y - 0.5 or qk > size_z - 0.5:
                out[zl, yl, xl] = default
                continue
            if nearest:  # halves rounded up, clamped: within half a voxel outside takes the border voxel
                mi = min(max(int(np.floor(qi + 0.5)), 0), size_x - 1)
                mj = min(max(int(np.floor(qj + 0.5)), 0), size_y - 1)
                mk = min(max(int(np.floor(qk + 0.5)), 0), size_z - 1)
                out[zl, yl, xl] = source[mk, mj, mi]
                continue
            qi = min(max(qi, 0.0), size_x - 1.0)
            qj = min(max(qj, 0.0), size_y - 1.0)
            qk = min(max(qk, 0.0), size_z - 1.0)
            i0, j0, k0 = int(qi), int(qj), int(qk)
            i1, j1, k1 = min(i0 + 1, size_x - 1), min(j0 + 1, size_y - 1), min(k0 + 1, size_z - 1)
            ui, uj, uk = qi - i0, qj - j0, qk - k0
            a = np.float64(source[k0, j0, i0])
            c00 = a + ui * (np.float64(source[k0, j0, i1]) - a)
            a = np.float64(source[k0, j1, i0])
            c01 = a + ui * (np.float64(source[k0, j1, i1]) - a)
            a = np.float64(source[k1, j0, i0])
            c10 = a + ui * (np.float64(source[k1, j0, i1]) - a)
            a = np.float64(source[k1, j1, i0])
            c11 = a + ui * (np.float64(source[k1, j1, i1]) - a)
            c0 = c00 + uj * (c01 - c00)
            c1 = c10 + uj * (c11 - c10)
            value = c0 + uk * (c1 - c0)
            if integer:
                value = min(max(np.rint(value), low), high)
            out[zl, yl, xl] = value
