//! `crmsync console add-user | set-password | remove-user | add-token |
//! revoke-token`: the console's users and API tokens, from the command line (the console itself has no
//! page for them yet). Each is written to the admin audit log.

use std::io::BufRead;

use anyhow::Context;
use crmsync_console::users::{self, Role};
use crmsync_store::admin_audit::Actor;
use sqlx::PgPool;

use crate::args::{ConsoleCmd, ConsoleRole};

pub async fn run(pool: &PgPool, cmd: ConsoleCmd) -> anyhow::Result<()> {
    match cmd {
        // Served by the caller, which owns the signal handling.
        ConsoleCmd::Serve => {}
        ConsoleCmd::AddUser { name, role, password_file } => {
            let password = read_password(password_file)?;
            let role = match role {
                ConsoleRole::Admin => Role::Admin,
                ConsoleRole::Viewer => Role::Viewer,
            };
            users::add(pool, &Actor::cli(), &name, role, &password).await?;
            outln!("console user {name} added ({})", role.as_str());
        }
        ConsoleCmd::AddToken { user, name } => {
            let token = users::add_token(pool, &Actor::cli(), &user, &name).await?;
            // The token alone on standard output, for scripts to capture;
            // it is not kept, so it cannot be shown again.
            outln!("{token}");
            crate::out::err_line(format_args!("API token {name:?} for {user}: keep it now, it cannot be shown again"));
        }
        ConsoleCmd::SetPassword { name, password_file } => {
            users::set_password(pool, &Actor::cli(), &name, &read_password(password_file)?).await?;
            outln!("console user {name}: password set; their sessions are ended");
        }
        ConsoleCmd::RemoveUser { name } => {
            users::remove(pool, &Actor::cli(), &name).await?;
            outln!("console user {name} removed, with their sessions and API tokens");
        }
        ConsoleCmd::RevokeToken { user, name } => {
            let n = users::revoke_tokens(pool, &Actor::cli(), &user, &name).await?;
            outln!("{n} API token(s) {name:?} of {user} revoked");
        }
    }
    Ok(())
}

/// The password from `--password-file`, or else standard input.
fn read_password(file: Option<std::path::PathBuf>) -> anyhow::Result<String> {
    Ok(match file {
        Some(path) => first_line(&std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?),
        None => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).context("reading the password from standard input")?;
            first_line(&line)
        }
    })
}

/// A password as a file or a pipe holds it: the first line, without its
/// line ending (other whitespace is part of the password).
fn first_line(text: &str) -> String {
    text.split('\n').next().unwrap_or_default().trim_end_matches('\r').to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_action_of_the_console_is_a_command_of_the_cli() {
        use clap::Parser;
        for (route, command) in crmsync_console::ACTIONS {
            let parsed = crate::args::Cli::try_parse_from(command.split_whitespace());
            assert!(parsed.is_ok(), "{route}: `{command}` is not a command: {}", parsed.unwrap_err());
        }
    }

    #[test]
    fn the_password_is_the_first_line_without_its_ending() {
        assert_eq!(super::first_line("  pass word \r\nsecond"), "  pass word ");
        assert_eq!(super::first_line("no newline"), "no newline");
        assert_eq!(super::first_line(""), "");
    }
}
