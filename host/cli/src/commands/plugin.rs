//! `coffer plugin list|inspect`. Everything a plugin says about itself is
//! printed escaped (`ls -q` style): inspecting an untrusted plugin must not
//! let it write to the terminal. `info` runs under its own short limit.

use anyhow::Result;
use clap::Subcommand;
use coffer_runtime::{JobOptions, printable};

use crate::output::print_json;
use crate::{ConfigArgs, Global, LimitArgs};

#[derive(Subcommand, Debug)]
pub enum PluginCmd {
    /// List the built-in plugins.
    List,
    /// Show a plugin's name, version, config schema and, with a config, what it needs.
    Inspect {
        /// A built-in name or a path to a `.wasm` file.
        plugin: String,
        #[command(flatten)]
        cfg: ConfigArgs,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

pub async fn run(g: &Global, cmd: PluginCmd) -> Result<u8> {
    let rt = crate::plugins::runtime()?;
    match cmd {
        PluginCmd::List => {
            let mut all = Vec::new();
            for (name, _) in crate::plugins::BUILTIN {
                let p = crate::plugins::load(&rt, name)?;
                all.push(p.info(None, &JobOptions::default()).await?);
            }
            if g.json {
                print_json(&all)?;
            } else {
                for d in all {
                    println!("{:<10} {:<8} {}", d.name, printable(&d.version), printable(&d.description));
                }
            }
        }
        PluginCmd::Inspect { plugin, cfg, limits } => {
            let p = crate::plugins::load(&rt, &plugin)?;
            let job = crate::config::for_plugin(&p, &Default::default(), &cfg, &limits, None).await?;
            let opts = JobOptions { limits: job.limits, ..JobOptions::default() };
            let described = if cfg.set.is_empty() && cfg.config.is_none() {
                p.info(None, &opts).await?
            } else {
                p.info(Some(&job.config), &opts).await?
            };
            if g.json {
                print_json(&described)?;
            } else {
                println!("name:        {}", printable(&described.name));
                println!("version:     {}", printable(&described.version));
                println!("description: {}", printable(&described.description));
                println!(
                    "digest:      {}{}",
                    described.digest,
                    if p.is_builtin() { " (built into this coffer)" } else { "" }
                );
                println!(
                    "contract:    coffer:plugin@{}{}",
                    described.contract,
                    if described.contract == "0.1.0" { " (no streams)" } else { "" }
                );
                let mut modes = Vec::new();
                if described.restore_directory {
                    modes.push("directory (--target DIR)");
                }
                if described.restore_live {
                    modes.push("live server (--set url=...)");
                }
                println!("restores:    {}", if modes.is_empty() { "none".to_string() } else { modes.join(", ") });
                if !described.source.is_empty() {
                    println!("source:      {}", printable(&described.source));
                }
                if !described.capabilities.is_empty() {
                    println!("needs:");
                    for c in &described.capabilities {
                        println!("  {}", printable(c));
                    }
                }
                println!("config schema:");
                let pretty = serde_json::from_str::<serde_json::Value>(&described.config_schema)
                    .and_then(|v| serde_json::to_string_pretty(&v))
                    .unwrap_or(described.config_schema.clone());
                for line in pretty.lines() {
                    println!("  {}", printable(line));
                }
            }
        }
    }
    Ok(0)
}
