//! `whirligig provision [--dry-run] [--prune]`: the plan, or its application,
//! one line per resource on stdout; exit 1 when any step failed.

use std::process::ExitCode;

use whirligig_registry::Registry;

use super::Fatal;
use crate::config::Config;
use crate::provision::{Options, ProvisionError, provision};

pub(super) async fn run(config: &Config, registry: &Registry, options: Options) -> Result<ExitCode, Fatal> {
    let summary =
        provision(registry, config, options, &mut |line| println!("{line}")).await.map_err(|error| match error {
            ProvisionError::Setup(text) => Fatal::Usage(text),
            read @ ProvisionError::Read { .. } => Fatal::Failed(read.to_string()),
        })?;
    if summary.failed > 0 {
        return Err(Fatal::Failed(format!(
            "{} step(s) failed; each is named above with Google's answer",
            summary.failed
        )));
    }
    Ok(ExitCode::SUCCESS)
}
