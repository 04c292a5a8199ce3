//! What `--help` prints for every command, snapshotted, so that moving the
//! definitions of flags (from the libraries into this crate, or between modules)
//! cannot change a flag, its environment variable, its default or its help text
//! unnoticed.

use clap::CommandFactory;

use super::Cli;

/// The command line with what depends on the machine taken out: environment values
/// (the tests' own `AMQP_URL`) and the default concurrency (the number of cores).
fn machine_independent(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|arg| {
        let arg = arg.hide_env_values(true);
        if arg.get_id() == "concurrency" && !arg.get_default_values().is_empty() {
            arg.default_value("CORES")
        } else {
            arg
        }
    })
    .mut_subcommands(machine_independent)
}

/// Every command's path below `isotest`, depth first: `["worker"]`, `["token", "add"]`.
fn paths(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
    for sub in cmd.get_subcommands() {
        let mut path = prefix.to_vec();
        path.push(sub.get_name().to_owned());
        out.push(path.clone());
        paths(sub, &path, out);
    }
}

#[test]
fn every_command_prints_the_same_help() {
    let cmd = machine_independent(Cli::command());
    let mut all = vec![Vec::new()];
    paths(&cmd, &[], &mut all);
    assert!(all.len() > 15, "{} commands", all.len());
    for path in all {
        let args = std::iter::once("isotest".to_owned())
            .chain(path.iter().cloned())
            .chain(["--help".to_owned()]);
        let err = cmd
            .clone()
            .try_get_matches_from(args)
            .expect_err("--help ends parsing");
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp, "{path:?}");
        let name = if path.is_empty() {
            "isotest".to_owned()
        } else {
            path.join("_")
        };
        insta::assert_snapshot!(name, err.render().to_string());
    }
}
