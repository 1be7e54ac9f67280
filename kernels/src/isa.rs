//! Runtime choice of the instruction-set path, made once per process.
//!
//! `SLIMLM_KERNELS=scalar|portable|avx2|avx512|amx` forces a path; forcing one the CPU lacks is an error
//! reported by [`try_active`] (and a panic with that message from [`active`]).

use std::sync::OnceLock;

/// A kernel implementation family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// The plain scalar reference.
    Scalar,
    /// Portable SIMD through the `wide` crate (any target).
    Portable,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL (+ VNNI for INT8 where present).
    Avx512,
    /// AVX-512 with VNNI, and AMX tiles (`amx-int8`) for the integer GEMMs of prefill.
    Amx,
}

impl Isa {
    /// The name used by `SLIMLM_KERNELS`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Amx => "amx",
        }
    }

    /// Parses a `SLIMLM_KERNELS` value.
    pub fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(Isa::Scalar),
            "portable" => Some(Isa::Portable),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            "amx" => Some(Isa::Amx),
            _ => None,
        }
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar | Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.supported()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            Isa::Amx => Isa::Avx512.supported() && has_avx512_vnni() && crate::amx::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 => false,
        }
    }

    /// Every path this CPU can run, slowest first.
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Amx]
            .into_iter()
            .filter(|i| i.supported())
            .collect()
    }

    /// The best path this CPU can run.
    pub fn best() -> Isa {
        *Isa::available().last().expect("scalar is always available")
    }
}

/// Whether the CPU has AVX-512 VNNI (`vpdpbusd`), used by the AVX-512 INT8 kernels when present.
pub fn has_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

static ACTIVE: OnceLock<Result<Isa, String>> = OnceLock::new();

fn detect() -> Result<Isa, String> {
    resolve(std::env::var("SLIMLM_KERNELS").ok().as_deref())
}

/// The path a `SLIMLM_KERNELS` value selects (`None` or blank: the best available), or why it cannot run.
/// This is what [`try_active`] does with the environment, exposed for tests and tools.
pub fn resolve(value: Option<&str>) -> Result<Isa, String> {
    match value {
        Some(v) if !v.trim().is_empty() => {
            let isa = Isa::parse(v).ok_or_else(|| {
                format!("SLIMLM_KERNELS={v:?} is not one of scalar, portable, avx2, avx512, amx")
            })?;
            if isa.supported() {
                Ok(isa)
            } else {
                Err(format!(
                    "SLIMLM_KERNELS={} was requested but this CPU does not support it (available: {})",
                    isa.name(),
                    Isa::available().iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
                ))
            }
        }
        _ => Ok(Isa::best()),
    }
}

/// The path chosen for this process, or why the forced one cannot run.
pub fn try_active() -> Result<Isa, String> {
    ACTIVE.get_or_init(detect).clone()
}

/// The path chosen for this process.
///
/// # Panics
/// When `SLIMLM_KERNELS` names an unknown or unsupported path; call [`try_active`] first to report it.
pub fn active() -> Isa {
    match try_active() {
        Ok(isa) => isa,
        Err(e) => panic!("{e}"),
    }
}
