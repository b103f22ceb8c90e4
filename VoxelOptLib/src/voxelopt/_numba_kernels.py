"""The numba kernel behind :mod:`voxelopt.compiled` (imported only there, and only when numba is
installed). Compiled on first use per pixel type and cached on disk by numba (``cache=True``)."""

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def warp_rows(source, e, x_lo, x_hi, x_w, y_lo, y_hi, y_w, z_lo, z_hi, z_w, to_moving, offset,
              start_z, start_y, start_x, out, default, nearest, integer, low, high, read_type,
              row_start, row_stop):  # pragma: no cover - compiled; tested through voxelopt.compiled
    """Warp rows ``row_start .. row_stop - 1`` of ``out`` (z, y, x; rows are its flattened (z, y)),
    whose voxel (0, 0, 0) is the fixed-grid voxel (``start_z``, ``start_y``, ``start_x``);
    ``source`` (Z, Y, X) is C-contiguous.

    Per fixed voxel (i, j, k): the field ``e`` (3, fz, fy, fx; moving-index units, channels i,
    j, k) trilinear at field index (x_*[i], y_*[j], z_*[k]) (each axis: lower index, upper
    index, weight), first interpolated over (j, k) for a whole row; the moving index
    ``q = to_moving @ (i, j, k) + offset + e``; ``source`` (Z, Y, X) at ``q`` with ITK's rules
    (see :func:`voxelopt.compiled.warp_slab`).

    Each row in passes over buffers of its length: the moving indices; which voxels each point
    reads (a flat index into ``source``, for trilinear the steps to the upper corner along each
    axis and the weights), branch-free, which the compiler vectorises; the reads; for trilinear,
    the interpolation, branch-free again. The reads go into buffers of ``read_type``'s type (a
    0-length array; float32 holds every value of a 16-bit or float32 image exactly, float64 the
    others), and every point reads its corners, those outside the image too (their indices are
    clamped to it), so that no pass has a branch per point. The flat indices and steps are
    unsigned, so that the reads carry no negative-index wraparound (numba adds one to every
    signed index). A 512x512x600 int16 warp with a random field (``docs/performance_log.md``,
    2026-12-07): 0.69-0.70 s on 2 threads, 1.34-1.36 s on one,
    against 0.77 s and 1.52-1.53 s when each point was read and interpolated in one pass with a
    branch for the points outside; its labels (nearest, whole grid) 0.41-0.42 s on 2 threads.
    With the whole trilinear warp in one pass per point it took 1.25 s on 2 threads, with signed
    indices 15 % more.
    """
    size_x, size_y, size_z = source.shape[2], source.shape[1], source.shape[0]
    flat = source.reshape(-1)
    plane = size_x * size_y
    ny, nx = out.shape[1], out.shape[2]
    field_x = e.shape[3]
    row_field = np.empty((3, field_x))
    # the row's columns: field index below and above, weight, fixed index
    lo, hi, w = x_lo[start_x:start_x + nx].copy(), x_hi[start_x:start_x + nx].copy(), x_w[start_x:start_x + nx].copy()
    column = np.arange(start_x, start_x + nx).astype(np.float64)
    qi, qj, qk = np.empty(nx), np.empty(nx), np.empty(nx)  # moving indices, then the trilinear weights
    inside = np.empty(nx, np.bool_)  # within half a voxel of the image
    reads = np.empty((8, nx), read_type.dtype)  # the eight voxels each point reads (trilinear)
    corner = np.empty(nx, np.uint64)  # flat index of the voxel read (nearest) or of the lower corner
    # the flat steps from the lower to the upper corner along x, y and z (0 on the image's last voxel)
    step_x, step_y, step_z = np.empty(nx, np.uint64), np.empty(nx, np.uint64), np.empty(nx, np.uint64)
    one, zero, row_step, plane_step = np.uint64(1), np.uint64(0), np.uint64(size_x), np.uint64(size_x * size_y)
    last_x, last_y, last_z = size_x - 1.0, size_y - 1.0, size_z - 1.0
    half_x, half_y, half_z = size_x - 0.5, size_y - 0.5, size_z - 0.5
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
        m_i, m_j, m_k = to_moving[0, 0], to_moving[1, 0], to_moving[2, 0]
        field_i, field_j, field_k = row_field[0], row_field[1], row_field[2]
        for x in range(nx):  # pass 1: moving indices
            fa, fb, wi, i = lo[x], hi[x], w[x], column[x]
            qi[x] = base_i + m_i * i + field_i[fa] + wi * (field_i[fb] - field_i[fa])
            qj[x] = base_j + m_j * i + field_j[fa] + wi * (field_j[fb] - field_j[fa])
            qk[x] = base_k + m_k * i + field_k[fa] + wi * (field_k[fb] - field_k[fa])
        out_row = out[zl, yl]
        if nearest:  # halves rounded up, clamped: within half a voxel outside takes the border voxel
            for x in range(nx):  # pass 2: which voxel each point reads
                pi, pj, pk = qi[x], qj[x], qk[x]
                inside[x] = pi >= -0.5 and pj >= -0.5 and pk >= -0.5 and pi <= half_x and pj <= half_y and pk <= half_z
                mi = min(max(np.floor(pi + 0.5), 0.0), last_x)
                mj = min(max(np.floor(pj + 0.5), 0.0), last_y)
                mk = min(max(np.floor(pk + 0.5), 0.0), last_z)
                corner[x] = np.uint64(np.int64(mk) * plane + np.int64(mj) * size_x + np.int64(mi))
            for x in range(nx):  # pass 3: the reads
                out_row[x] = flat[corner[x]] if inside[x] else default
            continue
        for x in range(nx):  # pass 2: which voxels each point reads, with which weights
            pi, pj, pk = qi[x], qj[x], qk[x]
            inside[x] = pi >= -0.5 and pj >= -0.5 and pk >= -0.5 and pi <= half_x and pj <= half_y and pk <= half_z
            pi = min(max(pi, 0.0), last_x)
            pj = min(max(pj, 0.0), last_y)
            pk = min(max(pk, 0.0), last_z)
            i0, j0, k0 = np.int64(pi), np.int64(pj), np.int64(pk)
            qi[x], qj[x], qk[x] = pi - i0, pj - j0, pk - k0
            corner[x] = np.uint64(k0 * plane + j0 * size_x + i0)
            step_x[x] = one if pi < last_x else zero
            step_y[x] = row_step if pj < last_y else zero
            step_z[x] = plane_step if pk < last_z else zero
        for x in range(nx):  # pass 3: the reads (clamped indices: every point reads inside the image)
            p, di, dj, dk = corner[x], step_x[x], step_y[x], step_z[x]
            reads[0, x] = flat[p]
            reads[1, x] = flat[p + di]
            reads[2, x] = flat[p + dj]
            reads[3, x] = flat[p + dj + di]
            p += dk
            reads[4, x] = flat[p]
            reads[5, x] = flat[p + di]
            reads[6, x] = flat[p + dj]
            reads[7, x] = flat[p + dj + di]
        v000, v100, v010, v110 = reads[0], reads[1], reads[2], reads[3]
        v001, v101, v011, v111 = reads[4], reads[5], reads[6], reads[7]
        for x in range(nx):  # pass 4: trilinear in float64, branch-free
            ui, uj, uk = qi[x], qj[x], qk[x]
            a = np.float64(v000[x])
            c00 = a + ui * (np.float64(v100[x]) - a)
            a = np.float64(v010[x])
            c01 = a + ui * (np.float64(v110[x]) - a)
            a = np.float64(v001[x])
            c10 = a + ui * (np.float64(v101[x]) - a)
            a = np.float64(v011[x])
            c11 = a + ui * (np.float64(v111[x]) - a)
            c0 = c00 + uj * (c01 - c00)
            c1 = c10 + uj * (c11 - c10)
            value = c0 + uk * (c1 - c0)
            if integer:
                value = min(max(np.rint(value), low), high)
            out_row[x] = value if inside[x] else default


# ------------------------------------------------------------------ surface voxels
@numba.njit(nogil=True, cache=True)
def surface_marks(labels, marks, z_start, z_stop):  # pragma: no cover - compiled; tested through voxelopt.compiled
    """Planes ``z_start .. z_stop - 1``: ``marks`` (bool, the shape of ``labels``) is True where
    ``labels`` (Z, Y, X, any integer type; a view may be strided) is > 0 and a 6-neighbour has
    another value or lies outside the array."""
    size_z, size_y, size_x = labels.shape
    for z in range(z_start, z_stop):
        for y in range(size_y):
            inner_zy = 0 < z < size_z - 1 and 0 < y < size_y - 1
            for x in range(size_x):
                v = labels[z, y, x]
                if v <= 0:
                    marks[z, y, x] = False
                elif not inner_zy or x == 0 or x == size_x - 1:
                    marks[z, y, x] = True
                else:
                    marks[z, y, x] = (labels[z, y, x - 1] != v or labels[z, y, x + 1] != v
                                      or labels[z, y - 1, x] != v or labels[z, y + 1, x] != v
                                      or labels[z - 1, y, x] != v or labels[z + 1, y, x] != v)


@numba.njit(nogil=True, cache=True)
def overlap_counts(fixed, warped, counts, z_start, z_stop):  # pragma: no cover - compiled; tested through voxelopt.compiled
    """Planes ``z_start .. z_stop - 1`` of two label maps of one shape (any integer types; views
    may be strided): ``counts[0, v]`` += the voxels where ``warped`` is ``v``, ``counts[1, v]``
    += those where ``fixed`` is ``v`` too, for 0 < v < ``counts.shape[1]``."""
    size_z, size_y, size_x = warped.shape
    size = counts.shape[1]
    for z in range(z_start, z_stop):
        for y in range(size_y):
            for x in range(size_x):
                v = warped[z, y, x]
                if 0 < v < size:
                    counts[0, v] += 1
                    if fixed[z, y, x] == v:
                        counts[1, v] += 1


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
