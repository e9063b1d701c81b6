//! `keyfleet completions SHELL` and `keyfleet man [COMMAND]`: generated from the same
//! clap definitions the parser uses (clap_complete, clap_mangen), so they cannot drift
//! from the flags.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::CommandFactory;

use crate::{Cli, exit};

/// `keyfleet completions SHELL`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// `keyfleet man [COMMAND] [--output-dir DIR]`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// One command's page (`run`, `status`, `call`, ...); keyfleet's own when omitted.
    command: Option<String>,
    /// Write every page (keyfleet.1, keyfleet-run.1, ...) into DIR instead of printing one.
    #[arg(long, value_name = "DIR", conflicts_with = "command")]
    output_dir: Option<PathBuf>,
}

/// The whole command tree, built (subcommands know their `keyfleet-...` names).
fn command() -> clap::Command {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    command
}

pub(crate) fn completions(args: CompletionsArgs) -> anyhow::Result<u8> {
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut command, "keyfleet", &mut out);
    out.flush()?;
    Ok(exit::OK)
}

pub(crate) fn man(args: ManArgs) -> anyhow::Result<u8> {
    let command = command();
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let written = write_pages(command, dir)?;
        crate::note!("wrote {} man pages to {}", written, dir.display());
        return Ok(exit::OK);
    }
    let page = match &args.command {
        None => command,
        Some(name) => match command.find_subcommand(name) {
            Some(sub) if !sub.is_hide_set() => sub.clone(),
            _ => {
                let names: Vec<&str> = command
                    .get_subcommands()
                    .filter(|s| !s.is_hide_set())
                    .map(|s| s.get_name())
                    .collect();
                bail!(
                    "no command {:?}: one of {}",
                    keyfleet::display::escape(name),
                    names.join(", ")
                );
            }
        },
    };
    let mut out = std::io::stdout().lock();
    render(page, &mut out)?;
    out.flush()?;
    Ok(exit::OK)
}

/// One page as roff.
pub(crate) fn render(command: clap::Command, out: &mut dyn Write) -> std::io::Result<()> {
    clap_mangen::Man::new(command).render(out)
}

/// Every page of `command` and its subcommands (recursively) into `dir`; how many.
fn write_pages(command: clap::Command, dir: &std::path::Path) -> anyhow::Result<usize> {
    let mut written = 0;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        written += write_pages(sub.clone(), dir)?;
    }
    let path = clap_mangen::Man::new(command)
        .generate_to(dir)
        .with_context(|| format!("cannot write a man page into {}", dir.display()))?;
    tracing::debug!(path = %path.display(), "man page written");
    Ok(written + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_visible_command_has_a_page_with_the_roff_sections() {
        let command = command();
        let mut names = vec![None];
        names.extend(
            command
                .get_subcommands()
                .filter(|s| !s.is_hide_set())
                .map(|s| Some(s.get_name().to_string())),
        );
        assert!(names.len() > 10, "{names:?}");
        for name in names {
            let page = match &name {
                None => command.clone(),
                Some(name) => command.find_subcommand(name).unwrap().clone(),
            };
            let mut roff = Vec::new();
            render(page, &mut roff).unwrap();
            let roff = String::from_utf8(roff).unwrap();
            assert!(
                roff.starts_with(".ie \\n(.g .ds Aq"),
                "{name:?}: {roff:.80}"
            );
            for section in [".TH ", ".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS"] {
                assert!(roff.contains(section), "{name:?} lacks {section}");
            }
        }
    }
}
