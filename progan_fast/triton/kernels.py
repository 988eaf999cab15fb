"""Triton kernels for PGGAN's memory-bound operators (forward and first-order backward).

Conventions shared by every kernel here:
- every operand is addressed through its own strides (no hidden `.contiguous()`); the launchers in
  `launchers.py` plan the iteration (see `_layout.py`) so that the innermost tile axis is the
  innermost memory axis of the output;
- loads and stores in the storage dtype, math in `ACC` (float32, or float64 for float64 checks);
- `IDX64` switches index math to 64 bit only for tensors whose offsets do not fit in 32 bits;
- scalar `alpha` comes either as a float argument or, when `HAS_ALPHA_PTR`, from a 0-d tensor, so a
  changing fade factor never recompiles anything nor syncs the host.

Second-order backwards are not kernels: each first-order backward op has a registered backward in
`library.py` (either another of these kernels, for the linear ops, or a short torch expression).
"""
import triton
import triton.language as tl

ACT_LINEAR, ACT_RELU, ACT_LRELU = 0, 1, 2


# ----------------------------------------------------------------------------- helpers

@triton.jit
def _act(v, ACT: tl.constexpr, slope):
    if ACT == 2:
        v = tl.where(v > 0, v, v * slope)
    elif ACT == 1:
        v = tl.where(v > 0, v, 0.0)
    return v


@triton.jit
def _act_grad(d, pos, ACT: tl.constexpr, slope):
    """d * act'(v) where `pos` = (v > 0)."""
    if ACT == 2:
        d = tl.where(pos, d, d * slope)
    elif ACT == 1:
        d = tl.where(pos, d, 0.0)
    return d


@triton.jit
def _alpha(alpha_ptr, alpha, HAS_ALPHA_PTR: tl.constexpr, ACC: tl.constexpr):
    if HAS_ALPHA_PTR:
        a = tl.load(alpha_ptr).to(ACC)
    else:
        a = tl.cast(alpha, ACC)
    return a


@triton.jit
def _tile(R, S3, BR: tl.constexpr, BC: tl.constexpr, IDX64: tl.constexpr):
    """A [BR, BC] tile of a (rows x S3) iteration space from a 1-D grid; rows are the flattened
    outer dims, columns the innermost dim."""
    pid = tl.program_id(0)
    ncb = tl.cdiv(S3, BC)
    r = (pid // ncb) * BR + tl.arange(0, BR)
    c = (pid % ncb) * BC + tl.arange(0, BC)
    if IDX64:
        r = r.to(tl.int64)
        c = c.to(tl.int64)
    return r, c, (r < R)[:, None] & (c < S3)[None, :]


@triton.jit
def _split_rows(r, S1, S2):
    """Row index -> indices along the three outer dims (sizes S0, S1, S2)."""
    i2 = r % S2
    t = r // S2
    return t // S1, t % S1, i2


@triton.jit
def _off(i0, i1, i2, c, s0, s1, s2, s3):
    return (i0 * s0 + i1 * s1 + i2 * s2)[:, None] + (c * s3)[None, :]


# ----------------------------------------------------------------------------- bias + activation

@triton.jit
def bias_act_fwd_kernel(x_ptr, b_ptr, y_ptr, R, S1, S2, S3,
                        xs0, xs1, xs2, xs3, bs0, bs1, bs2, bs3, ys0, ys1, ys2, ys3,
                        slope, gain, HAS_B: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
                        BR: tl.constexpr, BC: tl.constexpr, IDX64: tl.constexpr):
    r, c, m = _tile(R, S3, BR, BC, IDX64)
    i0, i1, i2 = _split_rows(r, S1, S2)
    v = tl.load(x_ptr + _off(i0, i1, i2, c, xs0, xs1, xs2, xs3), mask=m, other=0.0).to(ACC)
    if HAS_B:
        v += tl.load(b_ptr + _off(i0, i1, i2, c, bs0, bs1, bs2, bs3), mask=m, other=0.0).to(ACC)
    v = _act(v, ACT, slope) * gain
    tl.store(y_ptr + _off(i0, i1, i2, c, ys0, ys1, ys2, ys3), v.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def bias_act_bwd_kernel(dy_ptr, y_ptr, dx_ptr, part_ptr, R, S1, S2, S3,
                        gs0, gs1, gs2, gs3, ys0, ys1, ys2, ys3, ds0, ds1, ds2, ds3,
                        slope, gain, ACT: tl.constexpr, ACC: tl.constexpr,
                        BR: tl.constexpr, BC: tl.constexpr, IDX64: tl.constexpr, DB: tl.constexpr,
                        ITERS: tl.constexpr):
    """dx = dy * gain * act'(x + b), the sign of x + b read back from the saved output y:
    x + b > 0  <=>  y * gain > 0 for relu/lrelu (gain == 0 makes dx 0 anyway).

    DB != 0 also writes partial sums of dx for the bias gradient, in fp32 before rounding, so db
    needs no second pass over dx; every partial is written by exactly one program (deterministic):
    - DB == 1, bias along the columns (channels_last): a program walks ITERS row tiles and writes
      its column sums once, part[program row, column], so the partials stay a small fraction of dx;
    - DB == 2, bias along a row dim (NCHW): part[row, column block] (ITERS == 1)."""
    pid = tl.program_id(0)
    ncb = tl.cdiv(S3, BC)
    c = (pid % ncb) * BC + tl.arange(0, BC)
    if IDX64:
        c = c.to(tl.int64)
    cm = c < S3
    colsum = tl.zeros([BC], dtype=ACC)
    for k in tl.range(0, ITERS, num_stages=1):  # no pipelining: registers stay low
        r = ((pid // ncb) * ITERS + k) * BR + tl.arange(0, BR)
        if IDX64:
            r = r.to(tl.int64)
        m = (r < R)[:, None] & cm[None, :]
        i0, i1, i2 = _split_rows(r, S1, S2)
        d = tl.load(dy_ptr + _off(i0, i1, i2, c, gs0, gs1, gs2, gs3), mask=m, other=0.0).to(ACC) * gain
        if ACT != 0:
            y = tl.load(y_ptr + _off(i0, i1, i2, c, ys0, ys1, ys2, ys3), mask=m, other=0.0).to(ACC)
            d = _act_grad(d, (y * gain) > 0, ACT, slope)
        tl.store(dx_ptr + _off(i0, i1, i2, c, ds0, ds1, ds2, ds3), d.to(dx_ptr.dtype.element_ty), mask=m)
        if DB == 1:
            colsum += tl.sum(d, axis=0)
        elif DB == 2:
            tl.store(part_ptr + r * ncb + pid % ncb, tl.sum(d, axis=1), mask=r < R)
    if DB == 1:
        tl.store(part_ptr + (pid // ncb) * S3 + c, colsum, mask=cm)


# ----------------------------------------------------------------------------- lerp

@triton.jit
def lerp_fwd_kernel(a_ptr, b_ptr, y_ptr, alpha_ptr, alpha, R, S1, S2, S3,
                    as0, as1, as2, as3, bs0, bs1, bs2, bs3, ys0, ys1, ys2, ys3,
                    HAS_ALPHA_PTR: tl.constexpr, ACC: tl.constexpr,
                    BR: tl.constexpr, BC: tl.constexpr, IDX64: tl.constexpr):
    r, c, m = _tile(R, S3, BR, BC, IDX64)
    i0, i1, i2 = _split_rows(r, S1, S2)
    t = _alpha(alpha_ptr, alpha, HAS_ALPHA_PTR, ACC)
    a = tl.load(a_ptr + _off(i0, i1, i2, c, as0, as1, as2, as3), mask=m, other=0.0).to(ACC)
    b = tl.load(b_ptr + _off(i0, i1, i2, c, bs0, bs1, bs2, bs3), mask=m, other=0.0).to(ACC)
    tl.store(y_ptr + _off(i0, i1, i2, c, ys0, ys1, ys2, ys3), (a + (b - a) * t).to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def lerp_bwd_kernel(g_ptr, da_ptr, db_ptr, alpha_ptr, alpha, R, S1, S2, S3,
                    gs0, gs1, gs2, gs3, as0, as1, as2, as3, bs0, bs1, bs2, bs3,
                    HAS_ALPHA_PTR: tl.constexpr, ACC: tl.constexpr,
                    BR: tl.constexpr, BC: tl.constexpr, IDX64: tl.constexpr):
    r, c, m = _tile(R, S3, BR, BC, IDX64)
    i0, i1, i2 = _split_rows(r, S1, S2)
    t = _alpha(alpha_ptr, alpha, HAS_ALPHA_PTR, ACC)
    g = tl.load(g_ptr + _off(i0, i1, i2, c, gs0, gs1, gs2, gs3), mask=m, other=0.0).to(ACC)
    tl.store(da_ptr + _off(i0, i1, i2, c, as0, as1, as2, as3), (g - g * t).to(da_ptr.dtype.element_ty), mask=m)
    tl.store(db_ptr + _off(i0, i1, i2, c, bs0, bs1, bs2, bs3), (g * t).to(db_ptr.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------- 2x2 resampling

@triton.jit
def quad_kernel(hi_in, lo_in, hi_out, lo_out, alpha_ptr, alpha, R, S1, S2, S3,
                hs0, hs1, hs2, hs3, hdh, hdw, ls0, ls1, ls2, ls3,
                os0, os1, os2, os3, odh, odw, ps0, ps1, ps2, ps3,
                MODE: tl.constexpr, HAS_ALPHA_PTR: tl.constexpr, ACC: tl.constexpr,
                BR: tl.constexpr, BC: tl.constexpr, IDX64: tl.constexpr):
    """One kernel for every 2x2 resampling op, iterating over the low-resolution grid: each
    low-res position owns a 2x2 quad of high-res taps (hi strides are pre-doubled along H, W;
    hdh/hdw step to the second row/column of the quad).
    MODE 0 downsample2x        lo_out = mean(hi_in quad)
    MODE 1 downsample2x_grad   hi_out quad = lo_in / 4
    MODE 2 upsample_blend      hi_out quad = lo_in + (hi_in - lo_in) * alpha
    MODE 3 upsample_blend_grad hi_out quad = hi_in * alpha;  lo_out = sum(hi_in quad) * (1 - alpha)
    MODE 4 fade_reals          hi_out quad = l + (hi_in - l) * alpha,  l = mean(hi_in quad)"""
    r, c, m = _tile(R, S3, BR, BC, IDX64)
    i0, i1, i2 = _split_rows(r, S1, S2)
    if MODE != 1:
        h = hi_in + _off(i0, i1, i2, c, hs0, hs1, hs2, hs3)
        t00 = tl.load(h, mask=m, other=0.0).to(ACC)
        t01 = tl.load(h + hdw, mask=m, other=0.0).to(ACC)
        t10 = tl.load(h + hdh, mask=m, other=0.0).to(ACC)
        t11 = tl.load(h + hdh + hdw, mask=m, other=0.0).to(ACC)
    if MODE >= 2:
        a = _alpha(alpha_ptr, alpha, HAS_ALPHA_PTR, ACC)
    if MODE == 0:
        tl.store(lo_out + _off(i0, i1, i2, c, ps0, ps1, ps2, ps3),
                 ((t00 + t01 + t10 + t11) * 0.25).to(lo_out.dtype.element_ty), mask=m)
    else:
        o = hi_out + _off(i0, i1, i2, c, os0, os1, os2, os3)
        ty = hi_out.dtype.element_ty
        if MODE == 1:
            v = (tl.load(lo_in + _off(i0, i1, i2, c, ls0, ls1, ls2, ls3), mask=m, other=0.0).to(ACC) * 0.25).to(ty)
            tl.store(o, v, mask=m)
            tl.store(o + odw, v, mask=m)
            tl.store(o + odh, v, mask=m)
            tl.store(o + odh + odw, v, mask=m)
        elif MODE == 3:
            tl.store(o, (t00 * a).to(ty), mask=m)
            tl.store(o + odw, (t01 * a).to(ty), mask=m)
            tl.store(o + odh, (t10 * a).to(ty), mask=m)
            tl.store(o + odh + odw, (t11 * a).to(ty), mask=m)
            s = t00 + t01 + t10 + t11
            tl.store(lo_out + _off(i0, i1, i2, c, ps0, ps1, ps2, ps3),
                     (s - s * a).to(lo_out.dtype.element_ty), mask=m)
        else:
            if MODE == 2:
                lo = tl.load(lo_in + _off(i0, i1, i2, c, ls0, ls1, ls2, ls3), mask=m, other=0.0).to(ACC)
            else:
                lo = (t00 + t01 + t10 + t11) * 0.25
            tl.store(o, (lo + (t00 - lo) * a).to(ty), mask=m)
            tl.store(o + odw, (lo + (t01 - lo) * a).to(ty), mask=m)
            tl.store(o + odh, (lo + (t10 - lo) * a).to(ty), mask=m)
            tl.store(o + odh + odw, (lo + (t11 - lo) * a).to(ty), mask=m)


# ----------------------------------------------------------------------------- pixel norm family

@triton.jit
def _z(x_ptrs, b_ptrs, m, cm, HAS_B: tl.constexpr, ACT: tl.constexpr, slope, gain, ACC: tl.constexpr):
    """Load a [BLOCK_C, BLOCK_I] tile and apply bias, activation and gain: (z, x + b)."""
    v = tl.load(x_ptrs, mask=m, other=0.0).to(ACC)
    if HAS_B:
        v += tl.load(b_ptrs, mask=cm, other=0.0).to(ACC)[:, None]
    return _act(v, ACT, slope) * gain, v


@triton.jit
def _pn_program(O, I, BLOCK_I: tl.constexpr, BLOCK_C: tl.constexpr, IDX64: tl.constexpr):
    pid = tl.program_id(0)
    nib = tl.cdiv(I, BLOCK_I)
    o = pid // nib
    i = (pid % nib) * BLOCK_I + tl.arange(0, BLOCK_I)
    c0 = tl.arange(0, BLOCK_C)
    if IDX64:
        o = o.to(tl.int64)
        i = i.to(tl.int64)
        c0 = c0.to(tl.int64)
    return o, i, c0


@triton.jit
def pn_fwd_kernel(x_ptr, b_ptr, y_ptr, O, C, I, xsO, xsC, xsI, bs, ysO, ysC, ysI,
                  slope, gain, eps, HAS_B: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr, ONE_CHUNK: tl.constexpr, IDX64: tl.constexpr):
    """y = z * rsqrt(mean_C(z^2) + eps), z = act(x + b) * gain, over the C axis of an [O, C, I]
    view. With ONE_CHUNK the whole C extent sits in registers: one read, one write."""
    o, i, c0 = _pn_program(O, I, BLOCK_I, BLOCK_C, IDX64)
    im = (i < I)[None, :]
    xb = x_ptr + o * xsO + i[None, :] * xsI
    yb = y_ptr + o * ysO + i[None, :] * ysI
    if ONE_CHUNK:
        cm = c0 < C
        m = cm[:, None] & im
        z, _ = _z(xb + c0[:, None] * xsC, b_ptr + c0 * bs, m, cm, HAS_B, ACT, slope, gain, ACC)
        rs = 1.0 / tl.sqrt(tl.sum(z * z, axis=0) / C + eps)
        tl.store(yb + c0[:, None] * ysC, (z * rs[None, :]).to(y_ptr.dtype.element_ty), mask=m)
    else:
        acc = tl.zeros([BLOCK_I], ACC)
        for c_start in range(0, C, BLOCK_C):
            c = c_start + c0
            cm = c < C
            z, _ = _z(xb + c[:, None] * xsC, b_ptr + c * bs, cm[:, None] & im, cm, HAS_B, ACT, slope, gain, ACC)
            acc += tl.sum(z * z, axis=0)
        rs = 1.0 / tl.sqrt(acc / C + eps)
        for c_start in range(0, C, BLOCK_C):
            c = c_start + c0
            cm = c < C
            m = cm[:, None] & im
            z, _ = _z(xb + c[:, None] * xsC, b_ptr + c * bs, m, cm, HAS_B, ACT, slope, gain, ACC)
            tl.store(yb + c[:, None] * ysC, (z * rs[None, :]).to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def pn_bwd_kernel(g_ptr, x_ptr, b_ptr, dx_ptr, part_ptr, O, C, I, gsO, gsC, gsI, xsO, xsC, xsI, bs, dsO, dsC, dsI,
                  slope, gain, eps, HAS_B: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr, ONE_CHUNK: tl.constexpr, IDX64: tl.constexpr,
                  DB: tl.constexpr):
    """dx = gain * act'(x + b) * (r * g - r^3 * z * mean_C(g * z)),  r = rsqrt(mean_C(z^2) + eps):
    the vector-Jacobian product of pn_fwd_kernel, recomputing z from the saved input.
    With DB (one channel chunk only) each program also writes the bias gradient's partial sums of
    its dx tile over its BLOCK_I pixels, part[program, C], in fp32 before rounding. (A loop over
    several pixel blocks per program would make the partials smaller, but Triton then hoists the
    tile's pointer tensors out of the loop: ~240 registers instead of ~90 at C = 512, sm_90.)"""
    if ONE_CHUNK:
        o, i, c0 = _pn_program(O, I, BLOCK_I, BLOCK_C, IDX64)
        cm = c0 < C
        m = cm[:, None] & (i < I)[None, :]
        z, v = _z(x_ptr + o * xsO + i[None, :] * xsI + c0[:, None] * xsC, b_ptr + c0 * bs, m, cm, HAS_B,
                  ACT, slope, gain, ACC)
        g = tl.load(g_ptr + o * gsO + i[None, :] * gsI + c0[:, None] * gsC, mask=m, other=0.0).to(ACC)
        rs = 1.0 / tl.sqrt(tl.sum(z * z, axis=0) / C + eps)
        k = rs * rs * rs * (tl.sum(g * z, axis=0) / C)
        d = _act_grad((g * rs[None, :] - z * k[None, :]) * gain, v > 0, ACT, slope)
        tl.store(dx_ptr + o * dsO + i[None, :] * dsI + c0[:, None] * dsC, d.to(dx_ptr.dtype.element_ty), mask=m)
        if DB:
            tl.store(part_ptr + tl.program_id(0) * C + c0, tl.sum(tl.where(m, d, 0.0), axis=1), mask=cm)
    else:
        o, i, c0 = _pn_program(O, I, BLOCK_I, BLOCK_C, IDX64)
        im = (i < I)[None, :]
        gb = g_ptr + o * gsO + i[None, :] * gsI
        xb = x_ptr + o * xsO + i[None, :] * xsI
        db = dx_ptr + o * dsO + i[None, :] * dsI
        szz = tl.zeros([BLOCK_I], ACC)
        sgz = tl.zeros([BLOCK_I], ACC)
        for c_start in range(0, C, BLOCK_C):
            c = c_start + c0
            cm = c < C
            m = cm[:, None] & im
            z, _ = _z(xb + c[:, None] * xsC, b_ptr + c * bs, m, cm, HAS_B, ACT, slope, gain, ACC)
            g = tl.load(gb + c[:, None] * gsC, mask=m, other=0.0).to(ACC)
            szz += tl.sum(z * z, axis=0)
            sgz += tl.sum(g * z, axis=0)
        rs = 1.0 / tl.sqrt(szz / C + eps)
        k = rs * rs * rs * (sgz / C)
        for c_start in range(0, C, BLOCK_C):
            c = c_start + c0
            cm = c < C
            m = cm[:, None] & im
            z, v = _z(xb + c[:, None] * xsC, b_ptr + c * bs, m, cm, HAS_B, ACT, slope, gain, ACC)
            g = tl.load(gb + c[:, None] * gsC, mask=m, other=0.0).to(ACC)
            d = _act_grad((g * rs[None, :] - z * k[None, :]) * gain, v > 0, ACT, slope)
            tl.store(db + c[:, None] * dsC, d.to(dx_ptr.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------- minibatch stddev

@triton.jit
def _mbstd_tile(M, G, L, P, S1, S2, GP: tl.constexpr, BLOCK: tl.constexpr, IDX64: tl.constexpr):
    """Program (m, p): the G samples of group m (n = g*M + m) x BLOCK per-sample elements, the
    per-sample index split over the three per-sample dims (memory order, sizes S0, S1, S2)."""
    pid = tl.program_id(0)
    mg = pid // P
    j = (pid % P) * BLOCK + tl.arange(0, BLOCK)
    g = tl.arange(0, GP)
    if IDX64:
        mg = mg.to(tl.int64)
        j = j.to(tl.int64)
        g = g.to(tl.int64)
    i2 = j % S2
    t = j // S2
    jm = j < L
    return pid, mg, g * M + mg, t // S1, t % S1, i2, jm, (g < G)[:, None] & jm[None, :]


@triton.jit
def _group_std(v, m, G, eps):
    mu = tl.sum(v, axis=0) / G
    d = tl.where(m, v - mu[None, :], 0.0)
    return d, tl.sqrt(tl.sum(d * d, axis=0) / G + eps)


@triton.jit
def mbstd_fwd_kernel(x_ptr, out_ptr, part_ptr, M, G, L, P, S1, S2,
                     xsn, xs0, xs1, xs2, osn, os0, os1, os2, eps,
                     ACC: tl.constexpr, GP: tl.constexpr, BLOCK: tl.constexpr, IDX64: tl.constexpr):
    """Copy x into out[:, :C] and write this tile's sum of per-element group stddevs to part."""
    pid, mg, n, i0, i1, i2, jm, m = _mbstd_tile(M, G, L, P, S1, S2, GP, BLOCK, IDX64)
    xv = tl.load(x_ptr + (n * xsn)[:, None] + (i0 * xs0 + i1 * xs1 + i2 * xs2)[None, :], mask=m, other=0.0)
    tl.store(out_ptr + (n * osn)[:, None] + (i0 * os0 + i1 * os1 + i2 * os2)[None, :], xv, mask=m)
    _, sd = _group_std(xv.to(ACC), m, G, eps)
    tl.store(part_ptr + pid, tl.sum(tl.where(jm, sd, 0.0), axis=0))


@triton.jit
def mbstd_fill_kernel(part_ptr, out_ptr, M, P, L, HW, W, osn, osh, osw, oc_off,
                      ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK: tl.constexpr, IDX64: tl.constexpr):
    """out[n, C, :, :] = (sum of group m's partials) / L  for n in group m = n % M."""
    pid = tl.program_id(0)
    nb = tl.cdiv(HW, BLOCK)
    n = pid // nb
    hw = (pid % nb) * BLOCK + tl.arange(0, BLOCK)
    if IDX64:
        n = n.to(tl.int64)
        hw = hw.to(tl.int64)
    mg = n % M
    acc = tl.zeros([BLOCK_P], ACC)
    for p0 in range(0, P, BLOCK_P):
        pp = p0 + tl.arange(0, BLOCK_P)
        acc += tl.load(part_ptr + mg * P + pp, mask=pp < P, other=0.0)
    s = tl.sum(acc, axis=0) / L
    val = (tl.zeros([BLOCK], ACC) + s).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + n * osn + oc_off + (hw // W) * osh + (hw % W) * osw, val, mask=hw < HW)


@triton.jit
def mbstd_gsum_kernel(dout_ptr, gs_ptr, M, G, HW, W, dsn, dsh, dsw, dc_off,
                      ACC: tl.constexpr, BLOCK: tl.constexpr, IDX64: tl.constexpr):
    """gs[m] = sum of the upstream gradient of the stddev channel over group m and H, W."""
    mg = tl.program_id(0)
    if IDX64:
        mg = mg.to(tl.int64)
    acc = tl.zeros([BLOCK], ACC)
    for k0 in range(0, G * HW, BLOCK):
        k = k0 + tl.arange(0, BLOCK)
        if IDX64:
            k = k.to(tl.int64)
        n = (k // HW) * M + mg
        hw = k % HW
        acc += tl.load(dout_ptr + n * dsn + dc_off + (hw // W) * dsh + (hw % W) * dsw,
                       mask=k < G * HW, other=0.0).to(ACC)
    tl.store(gs_ptr + mg, tl.sum(acc, axis=0))


@triton.jit
def mbstd_bwd_kernel(dout_ptr, x_ptr, dx_ptr, gs_ptr, M, G, L, P, S1, S2,
                     dsn, ds0, ds1, ds2, xsn, xs0, xs1, xs2, esn, es0, es1, es2, eps,
                     ACC: tl.constexpr, GP: tl.constexpr, BLOCK: tl.constexpr, IDX64: tl.constexpr):
    """dx = dout[:, :C] + gs[m] / (L * G) * (x - mean_g) / std_g."""
    pid, mg, n, i0, i1, i2, jm, m = _mbstd_tile(M, G, L, P, S1, S2, GP, BLOCK, IDX64)
    xv = tl.load(x_ptr + (n * xsn)[:, None] + (i0 * xs0 + i1 * xs1 + i2 * xs2)[None, :], mask=m, other=0.0).to(ACC)
    gv = tl.load(dout_ptr + (n * dsn)[:, None] + (i0 * ds0 + i1 * ds1 + i2 * ds2)[None, :], mask=m, other=0.0).to(ACC)
    d, sd = _group_std(xv, m, G, eps)
    coef = tl.load(gs_ptr + mg) / (L * G)
    dx = gv + d * (coef / sd)[None, :]
    tl.store(dx_ptr + (n * esn)[:, None] + (i0 * es0 + i1 * es1 + i2 * es2)[None, :],
             dx.to(dx_ptr.dtype.element_ty), mask=m)
