//! `meft train --config F [key=value ...]`: validate the experiment, then train (resuming from
//! the latest checkpoint in the output directory when there is one).

use std::path::PathBuf;

use crate::train::{RawConfig, TrainPlan, Trainer, build};

/// Arguments of `meft train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Experiment TOML file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Overrides with dotted keys, e.g. `optim.lr=3e-3 meft.neurons=4096`.
    pub overrides: Vec<String>,
}

/// Runs `meft train`; prints the summary as JSON on stdout.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let raw = RawConfig::load(&args.config, &args.overrides)?;
    let model_cfg = build::model_config(&raw.model.name)?;
    let plan = TrainPlan::new(raw, &model_cfg)?;
    let mut trainer = Trainer::new(plan)?;
    eprintln!("training {} steps, {} trainable parameters", trainer.total_steps(), trainer.adapter().param_count());
    let summary = trainer.run()?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
