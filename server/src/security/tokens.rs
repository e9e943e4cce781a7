//! Bearer tokens and roles: the `--auth-tokens` file (one `<role> <sha256-hex> [name]` line per token,
//! so the file holds no secret), and the constant-time lookup of a presented token.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::SecurityError;

/// What a token may do (recommender.proto and the README list which RPC needs which role).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A product service: events, Recommend, Score, sessions, ModelInfo without its failure list, Ping.
    Client,
    /// An operator: everything, including Reload and ModelInfo's load failures, and /metrics.
    Admin,
    /// A scraper or prober: /metrics, health, Ping; no session data.
    Monitor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Admin => "admin",
            Role::Monitor => "monitor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "client" => Ok(Role::Client),
            "admin" => Ok(Role::Admin),
            "monitor" => Ok(Role::Monitor),
            other => Err(format!(
                "unknown role {other:?} (expected client, admin or monitor)"
            )),
        }
    }
}

/// Who made a request: the token's name (from the file, or `sha256:<first 12 hex digits>`) and role.
/// Handlers find it in the request's extensions when tokens are configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: Arc<str>,
    pub role: Role,
}

/// The SHA-256 of a token, as stored in the tokens file (lowercase hex).
pub fn hash_hex(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// The line of the tokens file for `token`.
pub fn file_line(role: Role, token: &str, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("{role} {} {name}", hash_hex(token)),
        None => format!("{role} {}", hash_hex(token)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A name is a label in logs and metrics: short, printable, no spaces.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:@".contains(&b))
}

struct Entry {
    hash: [u8; 32],
    principal: Principal,
}

/// The tokens a server accepts.
pub struct TokenTable {
    entries: Vec<Entry>,
}

impl fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names and roles only: hashes are not secret, but there is no reason to print them.
        let names: Vec<String> = self
            .entries
            .iter()
            .map(|e| format!("{}:{}", e.principal.name, e.principal.role))
            .collect();
        f.debug_struct("TokenTable")
            .field("tokens", &names)
            .finish()
    }
}

impl TokenTable {
    /// Reads and parses a tokens file.
    pub fn load(path: &Path) -> Result<Self, SecurityError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecurityError::Read {
            what: "tokens file",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, reason)| SecurityError::Tokens {
            path: path.to_path_buf(),
            line,
            reason,
        })
    }

    /// Parses the tokens file format; an error is (line number, what is wrong with it).
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut first_line = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (role, hash, name) = match fields.as_slice() {
                [role, hash] => (*role, *hash, None),
                [role, hash, name] => (*role, *hash, Some(*name)),
                _ => {
                    return Err((
                        n,
                        format!(
                            "expected `<role> <sha256-hex> [name]`, found {} fields",
                            fields.len()
                        ),
                    ));
                }
            };
            let role: Role = role.parse().map_err(|e| (n, e))?;
            let hash = unhex(&hash.to_ascii_lowercase()).ok_or_else(|| {
                (
                    n,
                    "the second field must be the token's SHA-256 as 64 hex digits \
                     (`lambdarec token` prints such a line), never the token itself"
                        .to_string(),
                )
            })?;
            let name = match name {
                Some(name) if valid_name(name) => name.to_string(),
                Some(name) => {
                    return Err((
                        n,
                        format!(
                            "name {name:?} must be 1 to 64 letters, digits or ._-:@ characters"
                        ),
                    ));
                }
                None => format!("sha256:{}", &hex(&hash)[..12]),
            };
            if let Some(j) = entries.iter().position(|e| e.hash == hash) {
                return Err((
                    n,
                    format!("the same token is listed on line {}", first_line[j]),
                ));
            }
            first_line.push(n);
            entries.push(Entry {
                hash,
                principal: Principal {
                    name: Arc::from(name),
                    role,
                },
            });
        }
        if entries.is_empty() {
            return Err((
                0,
                "no tokens are listed (nobody could call the server)".into(),
            ));
        }
        Ok(TokenTable { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal of a presented token. The token is hashed and compared with every entry in
    /// constant time, without stopping at a match, so the time taken says nothing about which
    /// entry (or how much of a hash) matched.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found: Option<&Entry> = None;
        for e in &self.entries {
            if bool::from(e.hash.ct_eq(&presented)) {
                found = Some(e);
            }
        }
        found.map(|e| e.principal.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_comments_and_default_names() {
        let text = format!(
            "# tokens\n\n{}\n  {}  # the operator\n{}\n",
            file_line(Role::Client, "t-client", Some("shop")),
            file_line(Role::Admin, "t-admin", None)
                .to_uppercase()
                .replace("ADMIN", "admin"),
            file_line(Role::Monitor, "t-mon", Some("prometheus")),
        );
        let t = TokenTable::parse(&text).unwrap();
        assert_eq!(t.len(), 3);
        let p = t.authenticate("t-client").unwrap();
        assert_eq!((&*p.name, p.role), ("shop", Role::Client));
        let p = t.authenticate("t-admin").unwrap();
        assert_eq!(p.role, Role::Admin);
        assert_eq!(&*p.name, &format!("sha256:{}", &hash_hex("t-admin")[..12]));
        assert_eq!(t.authenticate("t-mon").unwrap().role, Role::Monitor);
        assert_eq!(t.authenticate("t-client "), None);
        assert_eq!(t.authenticate(""), None);
        assert!(!format!("{t:?}").contains(&hash_hex("t-client")));
    }

    #[test]
    fn sha256_matches_the_sha256sum_one_liner() {
        // printf %s test | sha256sum
        assert_eq!(
            hash_hex("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn bad_files_name_the_line_and_the_problem() {
        let h = hash_hex("x");
        let cases = [
            ("client\n".to_string(), 1, "found 1 fields"),
            (format!("\nroot {h}\n"), 2, "unknown role \"root\""),
            ("client s3cret\n".to_string(), 1, "64 hex digits"),
            (format!("client {}zz\n", &h[..62]), 1, "64 hex digits"),
            (format!("client {h} a b\n"), 1, "found 4 fields"),
            (format!("client {h} bad/name\n"), 1, "name \"bad/name\""),
            (format!("client {h}\nadmin {h}\n"), 2, "listed on line 1"),
            ("# nothing\n".to_string(), 0, "no tokens"),
        ];
        for (text, line, want) in cases {
            let (n, reason) = TokenTable::parse(&text).unwrap_err();
            assert_eq!(n, line, "{text:?}: {reason}");
            assert!(reason.contains(want), "{text:?}: {reason}");
        }
    }
}
