//! mk-docker-opts: turns flanneld's subnet.env into docker's options (`--bip`, `--mtu`,
//! `--ip-masq`), as flannel's `mk-docker-opts.sh` with the same flags.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use flannel::env::{self, DockerOptsStyle};

#[derive(Debug, Parser)]
#[command(
    name = "mk-docker-opts",
    about = "Docker options from flannel's subnet.env"
)]
struct Cli {
    /// flannel's env file.
    #[arg(short = 'f', default_value = "/run/flannel/subnet.env")]
    flannel_env: PathBuf,
    /// The file to write.
    #[arg(short = 'd', default_value = "/run/docker_opts.env")]
    docker_env: PathBuf,
    /// One variable per option.
    #[arg(short = 'i')]
    individual: bool,
    /// One combined variable.
    #[arg(short = 'c')]
    combined: bool,
    /// The combined variable's name.
    #[arg(short = 'k', default_value = "DOCKER_OPTS")]
    key: String,
    /// Leave out the ip-masq option.
    #[arg(short = 'm')]
    no_masq: bool,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mk-docker-opts: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let path = cli.flannel_env.display().to_string();
    let text =
        std::fs::read_to_string(&cli.flannel_env).with_context(|| format!("reading {path}"))?;
    let vars = env::parse_env(&path, &text)?;
    let current = std::env::var(&cli.key).unwrap_or_default();
    let style = DockerOptsStyle {
        individual: cli.individual,
        combined: cli.combined,
        no_masq: cli.no_masq,
    };
    let out = env::docker_opts(&path, &vars, style, &cli.key, &current)?;
    env::write(&cli.docker_env, &out)?;
    Ok(())
}
