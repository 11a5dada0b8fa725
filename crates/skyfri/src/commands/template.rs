//! `skyfri template ls`: the templates built into skyfri, which `skyfri new` starts from.

use anyhow::Result;
use serde::Serialize;
use skyfri_core::Template;
use skyfri_runtime::templates;

#[derive(clap::Subcommand)]
pub enum TemplateCmd {
    /// List the templates: name, language, aliases and what the handler looks like.
    Ls(Ls),
}

impl TemplateCmd {
    pub async fn run(self) -> Result<()> {
        match self {
            TemplateCmd::Ls(c) => c.run(),
        }
    }
}

#[derive(clap::Args)]
pub struct Ls {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Row {
    name: &'static str,
    language: &'static str,
    aliases: &'static [&'static str],
    description: &'static str,
}

impl Ls {
    fn run(self) -> Result<()> {
        let rows: Vec<Row> = Template::ALL
            .into_iter()
            .map(|t| {
                let s = templates::starter(t);
                Row {
                    name: t.name(),
                    language: s.language,
                    aliases: t.aliases(),
                    description: s.description,
                }
            })
            .collect();
        if self.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
            return Ok(());
        }
        let header = format!(
            "{:<15} {:<27} {:<34} DESCRIPTION",
            "TEMPLATE", "LANGUAGE", "ALIASES"
        );
        println!("{}", crate::term::header(&header));
        for r in rows {
            let aliases = if r.aliases.is_empty() {
                "-".to_string()
            } else {
                r.aliases.join(", ")
            };
            println!(
                "{:<15} {:<27} {:<34} {}",
                r.name, r.language, aliases, r.description
            );
        }
        Ok(())
    }
}
