//! The command line (SPEC §15): one clap definition for parsing, `--help`
//! on the binary and every subcommand, shell completions and the man page.

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

/// `<version> (<git commit>, <target>)`, as `--version` prints it after the name.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("DOCKSIDE_GIT_COMMIT"),
    ", ",
    env!("DOCKSIDE_TARGET"),
    ")"
);

const AFTER_HELP: &str = "\
The config file is --config PATH, else $DOCKSIDE_CONFIG, else /etc/dockside/dockside.toml
when it exists; every key can be overridden with DOCKSIDE__<SECTION>__<KEY>.
Exit codes: 0 ok, 1 failure, 64 configuration error, 73 state directory unusable.";

#[derive(Debug, Parser)]
#[command(
    name = "dockside",
    version = VERSION,
    about = "Mirrors Docker engines (direct or through Portainer) onto MQTT, with Home Assistant discovery",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// The TOML configuration file
    #[arg(short, long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Run an MQTT broker inside dockside (mqtt.embedded = true)
    #[arg(long, global = true)]
    pub embedded_broker: bool,
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum Cmd {
    /// Run the daemon (the default)
    Run,
    /// Print the effective configuration, secrets redacted
    CheckConfig,
    /// Is the running instance (same state.dir) healthy? Exit 0 or 1, one line saying why
    Health,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff)
    Manpage,
}

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "dockside", &mut out);
    out
}

/// The man page, `dockside.1`.
pub fn manpage() -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definition_is_consistent_and_parses_what_users_type() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from(["dockside", "--config", "/x.toml", "check-config"])
            .expect("parses");
        assert_eq!(c.config, Some(PathBuf::from("/x.toml")));
        assert_eq!(c.command, Some(Cmd::CheckConfig));
        let c = Cli::try_parse_from(["dockside", "run", "--embedded-broker"]).expect("parses");
        assert!(c.embedded_broker);
        assert!(Cli::try_parse_from(["dockside", "bogus"]).is_err());
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")) && VERSION.ends_with(')'));
        let bash = String::from_utf8(completions(clap_complete::Shell::Bash)).expect("utf8");
        assert!(bash.contains("check-config") && bash.contains("--config"));
        let man = String::from_utf8(manpage().expect("man")).expect("utf8");
        assert!(
            man.contains(".TH dockside") && man.contains("check\\-config"),
            "{man:.300}"
        );
    }
}
