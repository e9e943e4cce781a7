//! `lambdarec token`: makes a bearer token and its line of the `--auth-tokens` file (the file holds
//! only the token's SHA-256, so it can be read by the server and kept in config management without
//! exposing the token).

use std::io::Read;

use anyhow::Context;
use clap::Args;
use lambdarec_server::security::Role;
use lambdarec_server::security::tokens::{file_line, valid_name};

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    lambdarec token --role client --name shop     # prints a new token, then its tokens-file line\n  \
    lambdarec token --role admin --name ops | { read -r t; read -r line; echo \"$t\" > ops.token; echo \"$line\" >> tokens; }\n  \
    printf %s \"$TOKEN\" | lambdarec token --role client --stdin   # the line of an existing token\n\n\
    Without this binary: printf '%s %s %s\\n' client \"$(printf %s \"$TOKEN\" | sha256sum | cut -d' ' -f1)\" shop")]
pub struct TokenArgs {
    /// What the token may do: client (events, Recommend, Score, sessions, ModelInfo, Ping), admin
    /// (everything, Reload included) or monitor (/metrics, health, Ping).
    #[arg(long, value_parser = parse_role)]
    pub role: Role,
    /// The token's name in logs, metrics and `--max-sessions-per-token` (1 to 64 letters, digits or
    /// ._-:@); default: `sha256:` and the start of its hash.
    #[arg(long, value_parser = parse_name)]
    pub name: Option<String>,
    /// Hash a token read from stdin (one trailing newline ignored) instead of making one; only its
    /// line is printed.
    #[arg(long)]
    pub stdin: bool,
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

fn parse_name(s: &str) -> Result<String, String> {
    if valid_name(s) {
        Ok(s.to_string())
    } else {
        Err("a name is 1 to 64 letters, digits or ._-:@ characters".to_string())
    }
}

/// 32 random bytes from the TLS provider's CSPRNG, as 64 hex digits.
fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let (token, print_token) = if args.stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the token from stdin")?;
        let token = text.strip_suffix('\n').unwrap_or(&text);
        let token = token.strip_suffix('\r').unwrap_or(token).to_string();
        (token, false)
    } else {
        (new_token()?, true)
    };
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        anyhow::bail!(
            "a token must be printable ASCII without spaces (it travels as `authorization: Bearer <token>`)"
        );
    }
    let line = file_line(args.role, &token, args.name.as_deref());
    // The server parses the line exactly as it would the file: a bad name fails here, not there.
    lambdarec_server::security::TokenTable::parse(&line)
        .map_err(|(_, reason)| anyhow::anyhow!("{reason}"))?;
    if print_token {
        println!("{token}");
    }
    println!("{line}");
    Ok(())
}
