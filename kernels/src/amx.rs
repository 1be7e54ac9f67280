//! Intel AMX (`amx-tile` + `amx-int8`): the integer GEMMs' 32-token tiles through `tdpbusd`.
//!
//! AMX multiplies 16×64-byte tiles of u8 activations by 16×64-byte tiles of i8 weights laid out as quads
//! of K — the layout of the VNNI GEMM's packed panels (`int8.rs`'s `pack_weights`, `quant.rs`'s
//! `pack_panel_vnni`), which it reads in place. The i32 sums are exact, and the float steps per group
//! are `micro_vnni`'s, in its order: an AMX tile gives the VNNI tile's bits, hence matvec's.
//!
//! The instructions are written with `asm!` (no AMX intrinsics on stable Rust). Each block declares the
//! tiles it writes as clobbered; a tile pass still relies on the sums staying in their tiles from one
//! block to the next, which holds because no code the compiler generates touches the tile registers and
//! nothing is called between the blocks of a pass. Linux hands the tile state to a process only on
//! request ([`available`] asks once).

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;

    use crate::int8::x86::{group_step, transpose16, QGeom, Q_NR};

    /// Tokens per AMX tile pass: two A tiles of 16 tokens.
    pub(crate) const MR: usize = 32;

    /// Whether every group of `geo` is whole 64-byte steps of K (one tile's depth), as the panels and
    /// the activations are laid out.
    pub(crate) fn fits(geo: &QGeom) -> bool {
        geo.kp.is_multiple_of(64) && (geo.groups == 1 || geo.gp.is_multiple_of(64))
    }

    /// This thread's tile configuration, loaded by [`Tiles::configure`] and released when dropped
    /// (also when a panic unwinds through the block that holds it).
    pub(crate) struct Tiles(());

    impl Tiles {
        /// Loads the tile configuration of this thread: tiles 0–3 the i32 sums (16 tokens × 16
        /// outputs), 4–5 the activations (16 tokens × 64 bytes), 6–7 the weights (16 quads × 16 outputs
        /// × 4 bytes).
        ///
        /// # Safety
        /// [`super::available`] must have returned true.
        pub(crate) unsafe fn configure() -> Tiles {
            #[repr(C, align(64))]
            struct Config([u8; 64]);
            let mut c = Config([0; 64]);
            c.0[0] = 1; // palette 1
            for t in 0..8 {
                c.0[16 + 2 * t] = 64; // bytes per row
                c.0[48 + t] = 16; // rows
            }
            // SAFETY: AMX is available and enabled for this process (the caller's contract); the
            // configuration is 64 valid bytes.
            unsafe { asm!("ldtilecfg [{0}]", in(reg) c.0.as_ptr(), options(nostack, readonly)) };
            Tiles(())
        }
    }

    impl Drop for Tiles {
        fn drop(&mut self) {
            // SAFETY: a `Tiles` exists only after `configure`, so AMX is available to this process.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    }

    /// The four i32 sum tiles of a pass (tiles 0–3) as stored: tile `2a + b` is rows `16a ..+16` of
    /// the pass's first operand × columns `16b ..+16` of its second, 16 × 16 at 64-byte rows.
    #[repr(C, align(64))]
    struct Sums([i32; 4 * 256]);

    impl Sums {
        /// Room for the sum tiles, not initialised: [`Sums::store`] writes all of it before any read
        /// (zeroing 4 KiB per pass was a tenth of a prefill's GEMM time).
        #[inline(always)]
        fn uninit() -> std::mem::MaybeUninit<Sums> {
            std::mem::MaybeUninit::uninit()
        }

        /// Zeroes the sum tiles.
        ///
        /// # Safety
        /// A [`Tiles`] held on this thread.
        #[inline(always)]
        unsafe fn zero() {
            // SAFETY: tiles configured (contract); no memory touched.
            unsafe {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    out("tmm0") _,
                    out("tmm1") _,
                    out("tmm2") _,
                    out("tmm3") _,
                    options(nostack, nomem)
                )
            };
        }

        /// Stores the sum tiles into `dst`, which is then wholly initialised.
        ///
        /// # Safety
        /// A [`Tiles`] held on this thread.
        #[inline(always)]
        unsafe fn store(dst: &mut std::mem::MaybeUninit<Sums>) -> &Sums {
            let p = dst.as_mut_ptr() as *mut i32;
            // SAFETY: tiles configured (contract); `self` holds four 16 × 16 i32 tiles at 64-byte
            // rows.
            unsafe {
                asm!(
                    "tilestored [{p} + {s}*1], tmm0",
                    "tilestored [{p1} + {s}*1], tmm1",
                    "tilestored [{p2} + {s}*1], tmm2",
                    "tilestored [{p3} + {s}*1], tmm3",
                    p = in(reg) p,
                    p1 = in(reg) p.add(256),
                    p2 = in(reg) p.add(512),
                    p3 = in(reg) p.add(768),
                    s = in(reg) 64usize,
                    options(nostack)
                )
            };
            // SAFETY: the four tile stores above wrote all 4 × 256 i32 of `dst`.
            unsafe { dst.assume_init_ref() }
        }
    }

    /// Whether the W8A8 GEMM can read its weights in place as AMX tiles: `fits(geo)` and rows without
    /// padding (`k` a multiple of 64).
    pub(crate) fn reads_rows(geo: &QGeom) -> bool {
        fits(geo) && geo.kp == geo.k
    }

    /// Token tile `tt` (tokens `16·tt ..+16`) of `act` (`pack_act`'s u8 rows, `geo.kp` each) as
    /// `tdpbssd`'s B operand: per 64 bytes of K, 16 quads × 16 tokens × 4 bytes, back to i8 (`^ 0x80`).
    /// `dst` holds `geo.kp · 16` bytes.
    ///
    /// # Safety
    /// AVX-512 F must be available.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn tokens_as_b(geo: &QGeom, act: &[u8], tt: usize, dst: &mut [u8]) {
        let kp = geo.kp;
        assert!(kp.is_multiple_of(64));
        assert!(act.len() >= (tt + 1) * 16 * kp && dst.len() >= kp * 16);
        let flip = _mm512_set1_epi8(-128);
        let base = act.as_ptr().add(tt * 16 * kp);
        for c in 0..kp / 64 {
            let rows: [__m512; 16] = std::array::from_fn(|j| {
                _mm512_castsi512_ps(_mm512_loadu_si512(base.add(j * kp + c * 64) as *const _))
            });
            for (q, v) in transpose16(rows).into_iter().enumerate() {
                let at = dst.as_mut_ptr().add(c * 1024 + q * 64);
                _mm512_storeu_si512(at as *mut _, _mm512_xor_si512(_mm512_castps_si512(v), flip));
            }
        }
    }

    /// 32 outputs from `o` × 32 tokens from token tile `tt`: the weights read in place (rows of
    /// `values`, `[n, k]`) as A tiles, the tokens from [`tokens_as_b`] (`act_t`, `16·kp` bytes per
    /// token tile) as B; `Σ w·xq` exact by `tdpbssd`, then per group `acc = fma(sum, scale, acc)` and
    /// `y = acc·x_scale + bias` per element: `micro_vnni::<_, false>`'s bits.
    ///
    /// `ahead` is a stretch of memory (weights the caller reads next) to prefetch into L2 meanwhile,
    /// spread over the pass's steps: the weights come from DRAM once per product, and the tile loads
    /// would otherwise wait for them.
    ///
    /// # Safety
    /// AVX-512 F and FMA; a [`Tiles`] held on this thread;
    /// `reads_rows(geo)`; rows `o ..o + 32` of `values` and token tiles `tt, tt + 1` of `act_t` exist;
    /// `c` (token `16·tt`, output `o`) valid for 32 rows (stride `ldc`) of 32 floats.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn tile_rows(
        geo: &QGeom,
        values: &[i8],
        scales: &[f32],
        o: usize,
        act_t: &[u8],
        tt: usize,
        xscale: &[f32],
        bias: Option<&[f32]>,
        c: *mut f32,
        ldc: usize,
        ahead: &[i8],
    ) {
        // Lines of `ahead` to prefetch per step of 64 bytes of K.
        let per_step = ahead.len().div_ceil(64).div_ceil(geo.k / 64);
        let mut next = ahead.as_ptr();
        let end = ahead.as_ptr_range().end;
        let k = geo.k;
        assert!(values.len() >= (o + 32) * k && scales.len() >= (o + 32) * geo.groups);
        assert!(act_t.len() >= (tt + 2) * 16 * k && xscale.len() >= 32);
        let mut room = Sums::uninit();
        // acc[output][token], written whole by group 0 (from zero) before any read.
        let mut acc = std::mem::MaybeUninit::<[[f32; 32]; 32]>::uninit();
        let ap = acc.as_mut_ptr() as *mut f32;
        let (w0, w1) = (
            values.as_ptr().add(o * k),
            values.as_ptr().add((o + 16) * k),
        );
        let (b0, b1) = (
            act_t.as_ptr().add(tt * 16 * k),
            act_t.as_ptr().add((tt + 1) * 16 * k),
        );
        for g in 0..geo.groups {
            let q0 = g * geo.gp / 4;
            let q1 = q0 + geo.len(g).div_ceil(4);
            Sums::zero();
            for q in (q0..q1).step_by(16) {
                for _ in 0..per_step {
                    if next < end {
                        // SAFETY: a prefetch is a hint: it never faults, whatever the address.
                        unsafe { _mm_prefetch::<_MM_HINT_T1>(next) };
                        next = next.wrapping_add(64);
                    }
                }
                // SAFETY: `reads_rows(geo)` makes q0..q1 whole steps of 16 quads of unpadded rows:
                // the A loads read 16 rows of 64 bytes inside rows o..o+32 of `values`, the B loads
                // one 1 KiB block of each token tile (asserted above).
                unsafe {
                    asm!(
                        "tileloadd tmm4, [{a0} + {lda}*1]",
                        "tileloadd tmm5, [{a1} + {lda}*1]",
                        "tileloadd tmm6, [{b0} + {ldb}*1]",
                        "tileloadd tmm7, [{b1} + {ldb}*1]",
                        "tdpbssd tmm0, tmm4, tmm6",
                        "tdpbssd tmm1, tmm4, tmm7",
                        "tdpbssd tmm2, tmm5, tmm6",
                        "tdpbssd tmm3, tmm5, tmm7",
                        a0 = in(reg) w0.add(q * 4),
                        a1 = in(reg) w1.add(q * 4),
                        b0 = in(reg) b0.add(q / 16 * 1024),
                        b1 = in(reg) b1.add(q / 16 * 1024),
                        lda = in(reg) k,
                        ldb = in(reg) 64usize,
                        out("tmm0") _,
                        out("tmm1") _,
                        out("tmm2") _,
                        out("tmm3") _,
                        out("tmm4") _,
                        out("tmm5") _,
                        out("tmm6") _,
                        out("tmm7") _,
                        options(nostack, readonly)
                    )
                };
            }
            let sums = Sums::store(&mut room);
            for ol in 0..32 {
                let s = _mm512_set1_ps(scales[(o + ol) * geo.groups + g]);
                // Tile (ol / 16, half) row ol % 16: the 16 tokens of that half.
                let at = (ol / 16) * 512 + (ol % 16) * 16;
                for h in 0..2 {
                    let d = _mm512_loadu_si512(sums.0.as_ptr().add(at + h * 256) as *const _);
                    let a = ap.add(ol * 32 + h * 16);
                    let zero = _mm512_setzero_ps();
                    let f = if g == 0 { zero } else { _mm512_loadu_ps(a) };
                    let f = group_step::<false>(f, _mm512_cvtepi32_ps(d), s, zero, zero);
                    _mm512_storeu_ps(a, f);
                }
            }
        }
        // SAFETY: group 0 (there is at least one) wrote all 32 × 32 floats.
        let acc = unsafe { acc.assume_init_ref() };
        // y[t][o] = acc[o][t]·xs[t] (+ bias[o]): scaled along the tokens, transposed 16 × 16.
        for ob in 0..2 {
            let bv = bias.map(|b| _mm512_loadu_ps(b[o + ob * 16..o + ob * 16 + 16].as_ptr()));
            for tb in 0..2 {
                let xs = _mm512_loadu_ps(xscale.as_ptr().add(tb * 16));
                let rows: [__m512; 16] = std::array::from_fn(|i| {
                    _mm512_mul_ps(_mm512_loadu_ps(acc[ob * 16 + i].as_ptr().add(tb * 16)), xs)
                });
                for (t, v) in transpose16(rows).into_iter().enumerate() {
                    let v = bv.map_or(v, |b| _mm512_add_ps(v, b));
                    _mm512_storeu_ps(c.add((tb * 16 + t) * ldc + ob * 16), v);
                }
            }
        }
    }

    /// 32 tokens × `Q_NR` outputs over one packed panel: `micro_vnni::<32, OFF>`'s contract and bits.
    ///
    /// # Safety
    /// AVX-512 F/BW and FMA; a [`Tiles`] held on this thread; `fits(geo)`;
    /// `a` holds 32 rows of `geo.kp` bytes at stride `lda`; `panel` as for `micro_vnni`; `c` valid for
    /// 32 rows (stride `ldc`) of `cols` floats; with `OFF`, `xsum` holds `32 · geo.groups` floats.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn tile<const OFF: bool>(
        geo: &QGeom,
        a: *const u8,
        lda: usize,
        xscale: &[f32],
        xsum: *const f32,
        panel: *const u8,
        bias: Option<&[f32]>,
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        let vals = panel;
        let corr = panel.add(geo.kp * Q_NR) as *const i32;
        let sc = panel.add(geo.kp * Q_NR + geo.groups * Q_NR * 4) as *const f32;
        let offs = sc.add(geo.groups * Q_NR);
        let mut room = Sums::uninit();
        // Written whole by group 0 (from zero) before any read.
        let mut accf = std::mem::MaybeUninit::<[[f32; Q_NR]; MR]>::uninit();
        let ap = accf.as_mut_ptr() as *mut f32;
        for g in 0..geo.groups {
            let q0 = g * geo.gp / 4;
            let q1 = q0 + geo.len(g).div_ceil(4);
            Sums::zero();
            for q in (q0..q1).step_by(16) {
                // SAFETY: `fits(geo)` makes q0..q1 whole steps of 16 quads inside the padded row, so
                // each load reads 16 rows of 64 bytes within `a` (32 tokens × kp) and within the panel's
                // values (kp/4 quads × 128 bytes).
                unsafe {
                    asm!(
                        "tileloadd tmm4, [{a0} + {lda}*1]",
                        "tileloadd tmm5, [{a1} + {lda}*1]",
                        "tileloadd tmm6, [{b0} + {ldb}*1]",
                        "tileloadd tmm7, [{b1} + {ldb}*1]",
                        "tdpbusd tmm0, tmm4, tmm6",
                        "tdpbusd tmm1, tmm4, tmm7",
                        "tdpbusd tmm2, tmm5, tmm6",
                        "tdpbusd tmm3, tmm5, tmm7",
                        a0 = in(reg) a.add(q * 4),
                        a1 = in(reg) a.add(16 * lda + q * 4),
                        b0 = in(reg) vals.add(q * Q_NR * 4),
                        b1 = in(reg) vals.add(q * Q_NR * 4 + 64),
                        lda = in(reg) lda,
                        ldb = in(reg) Q_NR * 4,
                        out("tmm0") _,
                        out("tmm1") _,
                        out("tmm2") _,
                        out("tmm3") _,
                        out("tmm4") _,
                        out("tmm5") _,
                        out("tmm6") _,
                        out("tmm7") _,
                        options(nostack, readonly)
                    )
                };
            }
            let sums = Sums::store(&mut room);
            let c0 = _mm512_loadu_si512(corr.add(g * Q_NR) as *const _);
            let c1 = _mm512_loadu_si512(corr.add(g * Q_NR + 16) as *const _);
            let s0 = _mm512_loadu_ps(sc.add(g * Q_NR));
            let s1 = _mm512_loadu_ps(sc.add(g * Q_NR + 16));
            for r in 0..MR {
                let f = ap.add(r * Q_NR);
                let at = (r / 16) * 512 + (r % 16) * 16;
                let i0 = _mm512_loadu_si512(sums.0.as_ptr().add(at) as *const _);
                let i1 = _mm512_loadu_si512(sums.0.as_ptr().add(at + 256) as *const _);
                let d0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(i0, c0));
                let d1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(i1, c1));
                let (f0, f1) = if g == 0 {
                    (_mm512_setzero_ps(), _mm512_setzero_ps())
                } else {
                    (_mm512_loadu_ps(f), _mm512_loadu_ps(f.add(16)))
                };
                let (off0, off1, xs) = if OFF {
                    (
                        _mm512_loadu_ps(offs.add(g * Q_NR)),
                        _mm512_loadu_ps(offs.add(g * Q_NR + 16)),
                        _mm512_set1_ps(*xsum.add(r * geo.groups + g)),
                    )
                } else {
                    (
                        _mm512_setzero_ps(),
                        _mm512_setzero_ps(),
                        _mm512_setzero_ps(),
                    )
                };
                let f0 = group_step::<OFF>(f0, d0, s0, off0, xs);
                let f1 = group_step::<OFF>(f1, d1, s1, off1, xs);
                _mm512_storeu_ps(f, f0);
                _mm512_storeu_ps(f.add(16), f1);
            }
        }
        // SAFETY: group 0 (there is at least one) wrote all MR × Q_NR floats.
        let accf = unsafe { accf.assume_init_ref() };
        for (r, f) in accf.iter().enumerate() {
            let xs = xscale[r];
            let out = std::slice::from_raw_parts_mut(c.add(r * ldc), cols);
            match bias {
                Some(b) => {
                    for ((o, &t), bb) in out.iter_mut().zip(f).zip(b) {
                        *o = t * xs + bb;
                    }
                }
                None => {
                    for (o, &t) in out.iter_mut().zip(f) {
                        *o = t * xs;
                    }
                }
            }
        }
    }
}

/// Whether this process can run AMX INT8 tiles: the CPU has `amx-tile` and `amx-int8` and (on Linux)
/// the kernel granted the tile state. Asked once.
pub fn available() -> bool {
    static AMX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AMX.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    if __cpuid(0).eax < 7 {
        return false;
    }
    let l7 = __cpuid_count(7, 0);
    if (l7.edx >> 24) & 1 == 0 || (l7.edx >> 25) & 1 == 0 {
        return false;
    }
    // arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): the kernel enables the tile data state for
    // this process, or says no (an old kernel, or a seccomp policy).
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: a plain Linux system call with two integer arguments; it reads and writes no memory of
    // ours, and `syscall` clobbers only rcx and r11 besides rax.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        )
    };
    ret == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}
