//! `slimlm synth`: a random-initialised model with the shapes of a published one.

use std::path::PathBuf;

use slimlm::synth::Preset;
use slimlm::Arch;

use super::CliResult;

#[derive(clap::Args)]
pub struct Args {
    /// Architecture: gpt2, gpt-neo, opt, gpt-neox or bloom.
    #[arg(long)]
    arch: String,
    /// Size: 124m, 355m (gpt2); 125m, 1.3b (gpt-neo); 125m, 350m (opt); 160m, 410m (gpt-neox, Pythia);
    /// 560m (bloom); tiny (all).
    #[arg(long)]
    preset: String,
    /// Output model directory.
    #[arg(long)]
    out: PathBuf,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to copy the tokenizer from. Default: the bundled model.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Replace an existing output directory.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(a: Args) -> CliResult {
    let arch = Arch::find(&a.arch)?;
    let preset = Preset::find(arch, &a.preset)?;
    let tok = super::model_dir(a.tokenizer);
    eprintln!(
        "writing {}-{} ({:.1}M parameters, F32) to {}",
        arch,
        preset.name,
        preset.parameters() as f64 / 1e6,
        a.out.display()
    );
    slimlm::synth::write_model(&preset, &a.out, a.seed, &tok, a.overwrite)?;
    Ok(())
}
