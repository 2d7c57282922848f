//! `coffer plugin list|inspect`.

use anyhow::Result;
use clap::Subcommand;
use coffer_runtime::JobOptions;

use crate::output::print_json;
use crate::{ConfigArgs, Global};

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
                    println!("{:<10} {:<8} {}", d.name, d.version, d.description);
                }
            }
        }
        PluginCmd::Inspect { plugin, cfg } => {
            let p = crate::plugins::load(&rt, &plugin)?;
            let base = p.info(None, &JobOptions::default()).await?;
            let described = if cfg.set.is_empty() && cfg.config.is_none() {
                base
            } else {
                let job = crate::config::for_plugin(&p, &Default::default(), &cfg, &Default::default(), None).await?;
                p.info(Some(&job.config), &JobOptions::default()).await?
            };
            if g.json {
                print_json(&described)?;
            } else {
                println!("name:        {}", described.name);
                println!("version:     {}", described.version);
                println!("description: {}", described.description);
                println!("digest:      {}", described.digest);
                let mut modes = Vec::new();
                if described.restore_directory {
                    modes.push("directory (--target DIR)");
                }
                if described.restore_live {
                    modes.push("live server (--set url=...)");
                }
                println!("restores:    {}", if modes.is_empty() { "none".to_string() } else { modes.join(", ") });
                if !described.source.is_empty() {
                    println!("source:      {}", described.source);
                }
                if !described.capabilities.is_empty() {
                    println!("needs:");
                    for c in &described.capabilities {
                        println!("  {c}");
                    }
                }
                println!("config schema:");
                let pretty = serde_json::from_str::<serde_json::Value>(&described.config_schema)
                    .and_then(|v| serde_json::to_string_pretty(&v))
                    .unwrap_or(described.config_schema.clone());
                for line in pretty.lines() {
                    println!("  {line}");
                }
            }
        }
    }
    Ok(0)
}
