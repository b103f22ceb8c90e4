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


# ------------------------------------------------------------------ surface distances
# An exact Euclidean distance transform (Felzenszwalb and Huttenlocher's lower envelope of
# parabolas, one axis at a time) over a box (Z, Y, X) of squared distances ``d`` (float64, mm^2)
# to the feature voxels (``features``, bool); ``step2_*`` is the squared voxel size along an axis.
# Axis 0 by a forward and a backward sweep, axis 1 by the lower envelope per plane, axis 2 by the
# lower envelope of each row that holds query points, evaluated only there.


@numba.njit(nogil=True, cache=True)
def distance_sweep_axis0(features, d, step2_z, y_start, y_stop):  # pragma: no cover - compiled; tested through voxelopt.compiled
    """Columns (y, x) for y in ``y_start .. y_stop - 1``: ``d`` gets the squared distance (mm^2)
    along axis 0 to the nearest feature in the same column, inf if there is none."""
    size_z, size_x = d.shape[0], d.shape[2]
    last = np.empty(size_x, np.int64)
    for y in range(y_start, y_stop):
        last[:] = -1
        for z in range(size_z):
            for x in range(size_x):
                if features[z, y, x]:
                    last[x] = z
                t = z - last[x]
                d[z, y, x] = np.inf if last[x] < 0 else step2_z * t * t
        last[:] = -1
        for z in range(size_z - 1, -1, -1):
            for x in range(size_x):
                if features[z, y, x]:
                    last[x] = z
                elif last[x] >= 0:
                    t = last[x] - z
                    nearer = step2_z * t * t
                    if nearer < d[z, y, x]:
                        d[z, y, x] = nearer


@numba.njit(nogil=True, cache=True)
def _lower_envelope(f, n, step2, vertex, boundary):  # pragma: no cover - compiled
    """The lower envelope of the parabolas ``f[p] + step2 (q - p)^2`` (p with finite ``f[p]``):
    parabola ``vertex[j]`` is lowest for q in ``boundary[j] .. boundary[j + 1]``; returns the index
    of the last parabola (-1 when every ``f`` is inf)."""
    last = -1
    for q in range(n):
        fq = f[q]
        if fq == np.inf:
            continue
        hq = fq + step2 * q * q
        cross = 0.0
        while last >= 0:
            p = vertex[last]
            cross = (hq - (f[p] + step2 * p * p)) / (2.0 * step2 * (q - p))
            if cross <= boundary[last]:
                last -= 1
            else:
                break
        last += 1
        vertex[last] = q
        boundary[last] = -np.inf if last == 0 else cross
    return last


@numba.njit(nogil=True, cache=True)
def distance_envelope_axis1(d, step2_y, z_start, z_stop):  # pragma: no cover - compiled
    """In place, planes ``z_start .. z_stop - 1``: the squared distances of axes 0 and 1 together,
    from those of axis 0 (each plane's columns copied into a transposed buffer, so each line is
    contiguous)."""
    size_y, size_x = d.shape[1], d.shape[2]
    lines = np.empty((size_x, size_y))
    vertex = np.empty(size_y, np.int64)
    boundary = np.empty(size_y + 1)
    for z in range(z_start, z_stop):
        for y in range(size_y):
            for x in range(size_x):
                lines[x, y] = d[z, y, x]
        for x in range(size_x):
            f = lines[x]
            last = _lower_envelope(f, size_y, step2_y, vertex, boundary)
            if last < 0:
                continue
            j = 0
            for q in range(size_y):
                while j < last and boundary[j + 1] < q:
                    j += 1
                p = vertex[j]
                d[z, q, x] = f[p] + step2_y * (q - p) * (q - p)


@numba.njit(nogil=True, cache=True)
def distance_at_points_axis2(d, step2_x, row_z, row_y, row_first, query_x, out, row_start, row_stop):  # pragma: no cover - compiled
    """The distance (mm) at the query points: rows ``row_start .. row_stop - 1`` of (``row_z``,
    ``row_y``) hold the queries ``row_first[r] .. row_first[r + 1] - 1`` at columns ``query_x``
    (ascending within a row); ``out`` gets the square root of the lower envelope of the row's
    squared distances of axes 0 and 1 (inf when there is no feature)."""
    size_x = d.shape[2]
    vertex = np.empty(size_x, np.int64)
    boundary = np.empty(size_x + 1)
    for r in range(row_start, row_stop):
        f = d[row_z[r], row_y[r]]
        last = _lower_envelope(f, size_x, step2_x, vertex, boundary)
        j = 0
        for n in range(row_first[r], row_first[r + 1]):
            if last < 0:
                out[n] = np.inf
                continue
            q = query_x[n]
            while j < last and boundary[j + 1] < q:
                j += 1
            p = vertex[j]
            out[n] = np.sqrt(f[p] + step2_x * (q - p) * (q - p))
