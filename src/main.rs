//! `darts`: the command-line interface of darts-rs.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use darts::Device;
use darts::train::demo::{DemoConfig, train_demo};

/// darts-rs: a from-scratch deep-learning engine and DARTS (Differentiable Architecture Search).
#[derive(Parser)]
#[command(name = "darts", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the version, the devices this build can use and the CPU thread count.
    Info,
    /// Train a small conv net (conv-BN-ReLU twice, global pool, linear) on generated images and
    /// print the loss and accuracy per step: a quick end-to-end check of the engine.
    Demo {
        /// Number of training steps.
        #[arg(long, default_value_t = 60)]
        steps: usize,
        /// Images per step.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// SGD learning rate.
        #[arg(long, default_value_t = 0.05)]
        learning_rate: f32,
        /// Seed of the generated data and of the initial weights.
        #[arg(long, default_value_t = 2)]
        seed: u64,
        /// Device to run on: cpu (cuda and emu arrive with the CUDA backend).
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> darts::Result<()> {
    match cli.command {
        Command::Info => {
            println!("darts {}", env!("CARGO_PKG_VERSION"));
            println!("devices: cpu (default: {})", Device::default_device());
            println!("cuda: not in this build (CPU reference backend only)");
            println!("cpu threads: {}", rayon::current_num_threads());
            Ok(())
        }
        Command::Demo {
            steps,
            batch_size,
            learning_rate,
            seed,
            device,
        } => {
            let device = Device::parse(&device)?;
            if steps == 0 || batch_size == 0 {
                return Err(darts::Error::invalid(
                    "demo",
                    "--steps and --batch-size must be at least 1",
                ));
            }
            println!(
                "training a small conv net on generated 3x12x12 images ({device}, {steps} steps, batch {batch_size})"
            );
            let start = Instant::now();
            let config = DemoConfig {
                steps,
                batch_size,
                learning_rate,
                seed,
            };
            let history = train_demo(config, |step, stats| {
                if step % 10 == 0 || step + 1 == steps {
                    let rate = ((step + 1) * batch_size) as f64 / start.elapsed().as_secs_f64();
                    println!(
                        "step {:>4}  loss {:.4}  acc {:>5.1}%  {:.0} img/s",
                        step,
                        stats.loss,
                        100.0 * stats.accuracy,
                        rate
                    );
                }
            })?;
            let first = history.first().map_or(f32::NAN, |s| s.loss);
            let last = history.last().map_or(f32::NAN, |s| s.loss);
            println!(
                "loss {first:.4} -> {last:.4} in {:.1} s",
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}
