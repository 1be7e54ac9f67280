//! A minimal f32 vector abstraction so the dense kernels and the GEMM micro-kernel are written once and
//! instantiated per instruction set.
//!
//! Every method is `#[inline(always)]`: the generic kernels are only ever called from a wrapper carrying
//! `#[target_feature(enable = ...)]`, into which the whole generic body (and the intrinsics it calls) is
//! inlined, so the instructions are those of the wrapper's feature set.

use half::{bf16, f16};

/// A SIMD register of `W` f32 lanes. All pointer arguments may be unaligned.
///
/// # Safety
/// Implementations for x86 use instructions that must exist on the running CPU: only call them from a
/// function compiled with (and reached after checking) the matching target features.
pub(crate) trait F32Vec: Copy {
    type F: Copy;
    const W: usize;
    unsafe fn zero() -> Self::F;
    unsafe fn splat(v: f32) -> Self::F;
    unsafe fn load(p: *const f32) -> Self::F;
    unsafe fn load_f16(p: *const f16) -> Self::F;
    unsafe fn load_bf16(p: *const bf16) -> Self::F;
    /// `W` signed bytes widened to f32.
    unsafe fn load_i8(p: *const i8) -> Self::F;
    unsafe fn store(p: *mut f32, v: Self::F);
    /// `a·b + c`.
    unsafe fn fma(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    unsafe fn add(a: Self::F, b: Self::F) -> Self::F;
    #[allow(dead_code)]
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn reduce(v: Self::F) -> f32;
    /// Hint that the cache line at `p` will be read soon (into L2). Never faults; `p` may be any address.
    #[inline(always)]
    fn prefetch<T>(p: *const T) {
        let _ = p;
    }
}

/// How far ahead of the rows being read the `[out, in]` matvec kernels prefetch, in bytes. A row is a short
/// stream (768 B in INT8 at GPT-2 124M) that the hardware prefetcher ramps up on too late; 16 KiB keeps enough
/// lines in flight to cover DRAM latency (measured at GPT-2 124M decode, 1 thread: 3 KiB (the next 4 rows)
/// 98 tok/s, 8 KiB 115, 16 KiB 129, 32 KiB 116). The hint matters as much: on Zen 4 the GPT-2 124M
/// products stream at 15 GB/s per core prefetching into L2 (T1), 7 GB/s into L1 (T0), 6 GB/s without.
pub(crate) const PREFETCH_BYTES: usize = 16 * 1024;

/// An element type of a dense matrix that a vector type can load and convert to f32.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    unsafe fn vload<V: F32Vec>(p: *const Self) -> V::F;
    fn f32(self) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    unsafe fn vload<V: F32Vec>(p: *const Self) -> V::F {
        V::load(p)
    }
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
}

impl Elem for f16 {
    #[inline(always)]
    unsafe fn vload<V: F32Vec>(p: *const Self) -> V::F {
        V::load_f16(p)
    }
    #[inline(always)]
    fn f32(self) -> f32 {
        self.to_f32()
    }
}

impl Elem for bf16 {
    #[inline(always)]
    unsafe fn vload<V: F32Vec>(p: *const Self) -> V::F {
        V::load_bf16(p)
    }
    #[inline(always)]
    fn f32(self) -> f32 {
        // bf16 is the high half of an f32: exact.
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

impl Elem for i8 {
    #[inline(always)]
    unsafe fn vload<V: F32Vec>(p: *const Self) -> V::F {
        V::load_i8(p)
    }
    #[inline(always)]
    fn f32(self) -> f32 {
        self as f32
    }
}

/// Portable 8-lane vector through `wide` (compiles everywhere; SSE2/NEON code on those targets).
#[derive(Clone, Copy)]
pub(crate) struct Wide;

impl F32Vec for Wide {
    type F = wide::f32x8;
    const W: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self::F {
        wide::f32x8::ZERO
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self::F {
        wide::f32x8::splat(v)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::F {
        wide::f32x8::from((p as *const [f32; 8]).read_unaligned())
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const f16) -> Self::F {
        let h = (p as *const [f16; 8]).read_unaligned();
        wide::f32x8::from(h.map(|v| v.to_f32()))
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const bf16) -> Self::F {
        let h = (p as *const [bf16; 8]).read_unaligned();
        wide::f32x8::from(h.map(|v| v.f32()))
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> Self::F {
        let h = (p as *const [i8; 8]).read_unaligned();
        wide::f32x8::from(h.map(|v| v as f32))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::F) {
        (p as *mut [f32; 8]).write_unaligned(v.to_array())
    }
    #[inline(always)]
    unsafe fn fma(a: Self::F, b: Self::F, c: Self::F) -> Self::F {
        a.mul_add(b, c)
    }
    #[inline(always)]
    unsafe fn add(a: Self::F, b: Self::F) -> Self::F {
        a + b
    }
    #[inline(always)]
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F {
        a * b
    }
    #[inline(always)]
    unsafe fn reduce(v: Self::F) -> f32 {
        v.reduce_add()
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{V256, V512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::F32Vec;
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    /// AVX2 + FMA + F16C, 8 lanes.
    #[derive(Clone, Copy)]
    pub(crate) struct V256;

    impl F32Vec for V256 {
        type F = __m256;
        const W: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self::F {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self::F {
            _mm256_set1_ps(v)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self::F {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const f16) -> Self::F {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const bf16) -> Self::F {
            let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
        }
        #[inline(always)]
        unsafe fn load_i8(p: *const i8) -> Self::F {
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self::F) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fma(a: Self::F, b: Self::F, c: Self::F) -> Self::F {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: Self::F, b: Self::F) -> Self::F {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: Self::F, b: Self::F) -> Self::F {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn reduce(v: Self::F) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
            _mm_cvtss_f32(s)
        }
        #[inline(always)]
        fn prefetch<T>(p: *const T) {
            // SAFETY: a prefetch is only a hint; it never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(p as *const i8) }
        }
    }

    /// AVX-512 F/BW/VL (+ the AVX2/FMA/F16C set), 16 lanes.
    #[derive(Clone, Copy)]
    pub(crate) struct V512;

    impl F32Vec for V512 {
        type F = __m512;
        const W: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self::F {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self::F {
            _mm512_set1_ps(v)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self::F {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const f16) -> Self::F {
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const bf16) -> Self::F {
            let h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h))
        }
        #[inline(always)]
        unsafe fn load_i8(p: *const i8) -> Self::F {
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)))
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self::F) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fma(a: Self::F, b: Self::F, c: Self::F) -> Self::F {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: Self::F, b: Self::F) -> Self::F {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: Self::F, b: Self::F) -> Self::F {
            _mm512_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn reduce(v: Self::F) -> f32 {
            _mm512_reduce_add_ps(v)
        }
        #[inline(always)]
        fn prefetch<T>(p: *const T) {
            // SAFETY: a prefetch is only a hint; it never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(p as *const i8) }
        }
    }
}
