//! `crossbatch-experiment`: run, check and list experiment files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use crossbatch_experiment::run::{Outcome, RunOptions};
use crossbatch_experiment::{render, run, spec};

#[derive(Parser)]
#[command(
    name = "crossbatch-experiment",
    version,
    about = "Server variants and a driver sweep from one file: run them and compare"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every variant of an experiment and write its report.
    Run {
        /// An experiment file, or the name of one in --dir.
        experiment: String,
        /// Pairs per config, overriding the file's `sweep.pairs` (a quick run).
        #[arg(long)]
        pairs: Option<usize>,
        /// Where the experiment's report directory goes.
        #[arg(long, default_value = "reports")]
        out: PathBuf,
        /// Directory of experiment files, for names.
        #[arg(long, default_value = "experiments")]
        dir: PathBuf,
        /// Where crossbatch-server and crossbatch-driver are [default: beside this
        /// program].
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// `--model` for variants that set none [default: the server's].
        #[arg(long)]
        model: Option<String>,
    },
    /// Check experiment files without running them (every file in --dir when none given).
    Check {
        files: Vec<PathBuf>,
        #[arg(long, default_value = "experiments")]
        dir: PathBuf,
    },
    /// List the experiments in --dir with their descriptions.
    List {
        #[arg(long, default_value = "experiments")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let result = match Cli::parse().command {
        Command::Run {
            experiment,
            pairs,
            out,
            dir,
            bin_dir,
            model,
        } => run_one(&experiment, pairs, out, &dir, bin_dir, model),
        Command::Check { files, dir } => check(files, &dir),
        Command::List { dir } => list(&dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `NAME` → `<dir>/NAME.toml`; a path stays a path.
fn resolve(experiment: &str, dir: &Path) -> PathBuf {
    let p = PathBuf::from(experiment);
    if p.extension().is_some() || p.components().count() > 1 {
        p
    } else {
        dir.join(format!("{experiment}.toml"))
    }
}

fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

fn default_workload() -> String {
    let bench = Path::new("../shared/reference/bench-800.jsonl");
    if bench.is_file() {
        bench.display().to_string()
    } else {
        "synthetic".into()
    }
}

fn run_one(
    experiment: &str,
    pairs: Option<usize>,
    out: PathBuf,
    dir: &Path,
    bin_dir: Option<PathBuf>,
    model: Option<String>,
) -> Result<ExitCode> {
    let exp = spec::load(&resolve(experiment, dir))?;
    if pairs == Some(0) {
        bail!("--pairs must be at least 1");
    }
    let bin_dir = match bin_dir {
        Some(d) => d,
        None => std::env::current_exe()
            .context("locating this program")?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let opts = RunOptions {
        pairs,
        out,
        bin_dir,
        default_workload: default_workload(),
        model: model.filter(|m| !m.is_empty()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let done = rt.block_on(run::run(&exp, &opts))?;
    let md = render::write(&exp, &done, pairs.unwrap_or(exp.sweep.pairs))?;
    println!("report: {}", md.display());
    let failed = done
        .outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
        .count();
    if failed > 0 {
        eprintln!("{failed} variant(s) failed; see the report");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn check(files: Vec<PathBuf>, dir: &Path) -> Result<ExitCode> {
    let files = if files.is_empty() {
        files_in(dir)?
    } else {
        files
    };
    let mut bad = 0;
    for f in &files {
        match spec::load(f) {
            Ok(e) => println!("ok   {} ({} variant(s))", f.display(), e.variants.len()),
            Err(e) => {
                bad += 1;
                eprintln!("error: {e}");
            }
        }
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn list(dir: &Path) -> Result<ExitCode> {
    for f in files_in(dir)? {
        match spec::load(&f) {
            Ok(e) => {
                let names: Vec<&str> = e.variants.iter().map(|v| v.name.as_str()).collect();
                println!(
                    "{:<20} {} [{}]",
                    e.name,
                    e.description.trim(),
                    names.join(", ")
                );
            }
            Err(e) => println!("{:<20} (invalid: {e})", f.display()),
        }
    }
    Ok(ExitCode::SUCCESS)
}
