//! Command-line front end: argument parsing and output; the work is done by the library.

/// `println!` to stdout that returns the write's error (a closed or full stdout) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::cli::output_error)
    }};
}
/// `print!` to stdout that returns the write's error instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*).map_err($crate::cli::output_error)
    }};
}

mod bench;
mod compress;
mod eval;
mod generate;
mod inspect;
mod perplexity;
#[cfg(feature = "server")]
mod serve;
mod synth;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Low-memory CPU inference of GPT-2 and GPT-Neo models.
#[derive(Parser)]
#[command(name = "slimlm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt.
    Generate(generate::Args),
    /// Perplexity of a text file (sliding windows, the goldens' rule).
    Perplexity(perplexity::Args),
    /// Write a random-initialised model with the shapes of GPT-2 124M/355M or GPT-Neo 125M/1.3B.
    Synth(synth::Args),
    /// Benchmarks that need a fresh process (memory).
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Compress a model (INT8, F16, low-rank factors) into a new model directory.
    Compress(compress::Args),
    /// Show a model's compression plan, bytes per component and layer, and ratio.
    Inspect(inspect::Args),
    /// Quality analysis of compressed models: compare, disparity, sweep, sensitivity.
    #[command(subcommand)]
    Eval(eval::Eval),
    #[cfg(feature = "server")]
    Serve(serve::Args),
}

/// The model bundled with slimlm, used when `--model` is not given.
pub const DEFAULT_MODEL: &str = "models/ref-gpt2";

/// `--model`, or the bundled model (relative to the working directory, else to the source tree).
pub fn model_dir(arg: Option<PathBuf>) -> PathBuf {
    arg.unwrap_or_else(|| {
        let local = Path::new(DEFAULT_MODEL);
        if local.is_dir() {
            local.to_path_buf()
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL)
        }
    })
}

/// A count flag that must be at least `min` (clap names the flag and the value in its error).
pub fn at_least(min: usize) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync {
    move |v| match v.parse::<usize>() {
        Ok(n) if n >= min => Ok(n),
        Ok(_) => Err(format!("must be at least {min}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Sets the size of the global thread pool (`None`: one thread per core).
pub fn set_threads(threads: Option<usize>) -> Result<(), String> {
    if let Some(n) = threads {
        let max = slimlm::kernels::par::MAX_THREADS;
        if !(1..=max).contains(&n) {
            return Err(format!("--threads must be between 1 and {max}, got {n}"));
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| format!("cannot set up {n} threads: {e}"))?;
    }
    Ok(())
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = slimlm::check_kernels() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Bench(b) => bench::run(b),
        Command::Compress(a) => compress::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Eval(e) => eval::run(e),
        #[cfg(feature = "server")]
        Command::Serve(a) => serve::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&*e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Errors of the command line: the library's, or a message.
pub type CliResult = Result<(), Box<dyn std::error::Error>>;

/// A failed write to stdout, saying so (the kind is kept, for [`is_broken_pipe`]).
pub fn output_error(e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("writing the output: {e}"))
}

/// True if `e` is a write to a closed pipe (`slimlm ... | head`): the reader is gone, so stop quietly.
fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::BrokenPipe;
        }
        cur = e.source();
    }
    false
}
