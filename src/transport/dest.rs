//! Parsing of the `DEST` argument: a local path, `tls://HOST:PORT`, or
//! `ssh://[USER@]HOST[:PORT]/PATH`. Pure; unit-tested here.
//!
//! Hosts are stored lowercased and without IPv6 brackets (`[::1]` is stored as `::1`);
//! [`Destination`]'s `Display` is the canonical text, so equal destinations print equal.

use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;

const TLS_FORM: &str = "tls://HOST:PORT[/NAME]";
const SSH_FORM: &str = "ssh://[USER@]HOST[:PORT]/PATH";

/// Where `send` delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A file or block device on this machine (receiver runs in-process).
    Local(PathBuf),
    /// A `blkmirror receive --listen` peer, reached over mutual TLS.
    Tls {
        /// Host name or IP address, lowercased, IPv6 without brackets.
        host: String,
        /// TCP port.
        port: u16,
        /// The target's name, for a receiver that serves several (`receive --targets`).
        name: Option<String>,
    },
    /// `blkmirror receive --stdio PATH` run on HOST through the system `ssh`.
    Ssh {
        /// Remote login name; `None`: ssh's default.
        user: Option<String>,
        /// Host name or IP address, lowercased, IPv6 without brackets.
        host: String,
        /// ssh port; `None`: ssh's default.
        port: Option<u16>,
        /// The target's path on the remote host.
        path: String,
    },
}

impl Destination {
    /// One spelling per destination, so that its state has one key and `status` one entry:
    /// a TLS host in lower case (host names and IPv6 literals are case-insensitive; the parser
    /// already lowers ssh hosts), an ssh port 22 left implicit.
    pub fn canonical(self) -> Destination {
        match self {
            Destination::Tls { host, port, name } => Destination::Tls {
                host: host.to_ascii_lowercase(),
                port,
                name,
            },
            Destination::Ssh {
                user,
                host,
                port: Some(22),
                path,
            } => Destination::Ssh {
                user,
                host,
                port: None,
                path,
            },
            other => other,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Local(path) => write!(f, "{}", path.display()),
            Destination::Tls { host, port, name } => {
                write!(f, "tls://{}", host_port(host, *port))?;
                match name {
                    Some(name) => write!(f, "/{name}"),
                    None => Ok(()),
                }
            }
            Destination::Ssh {
                user,
                host,
                port,
                path,
            } => {
                f.write_str("ssh://")?;
                if let Some(user) = user {
                    write!(f, "{user}@")?;
                }
                match port {
                    Some(port) => f.write_str(&host_port(host, *port))?,
                    None => f.write_str(&bracket_host(host))?,
                }
                if !path.starts_with('/') {
                    f.write_str("/")?;
                }
                f.write_str(path)
            }
        }
    }
}

/// `host:port`, with IPv6 hosts in brackets (`[::1]:9000`).
pub fn host_port(host: &str, port: u16) -> String {
    format!("{}:{port}", bracket_host(host))
}

fn bracket_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Parses DEST. Errors are one line naming the problem, e.g.
/// `invalid DEST "tls://host": missing port (expected tls://HOST:PORT)`.
pub fn parse_destination(text: &str) -> Result<Destination, String> {
    parse_inner(text).map_err(|problem| format!("invalid DEST {text:?}: {problem}"))
}

fn parse_inner(text: &str) -> Result<Destination, String> {
    let Some((scheme, rest)) = split_scheme(text) else {
        if text.is_empty() {
            return Err("empty path".to_string());
        }
        return Ok(Destination::Local(PathBuf::from(text)));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "tls" => parse_tls(rest),
        "ssh" => parse_ssh(rest),
        _ => Err(format!(
            "unknown scheme {scheme:?} (expected {TLS_FORM}, {SSH_FORM} or a local path)"
        )),
    }
}

/// Splits `SCHEME://REST` when SCHEME looks like a URL scheme; otherwise it is a local path.
fn split_scheme(text: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    (first_ok && rest_ok).then_some((scheme, rest))
}

fn parse_tls(rest: &str) -> Result<Destination, String> {
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (authority, name) = match rest.split_once('/') {
        Some((authority, name)) => {
            check_target_name(name).map_err(|e| format!("{e} (expected {TLS_FORM})"))?;
            (authority, Some(name.to_string()))
        }
        None => (rest, None),
    };
    if authority.contains('@') {
        return Err(format!("a user is not allowed here (expected {TLS_FORM})"));
    }
    let (host, port) = parse_host_port(authority, TLS_FORM)?;
    let port = port.ok_or_else(|| format!("missing port (expected {TLS_FORM})"))?;
    Ok(Destination::Tls { host, port, name })
}

/// Longest target name.
pub const MAX_TARGET_NAME: usize = 64;

/// A target's name in a receiver's targets file and in `tls://HOST:PORT/NAME`: 1 to 64 ASCII
/// letters, digits, `.`, `_` or `-`, not starting with `.` or `-`.
pub fn check_target_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if name.is_empty() || name.len() > MAX_TARGET_NAME || !ok_chars || name.starts_with(['.', '-'])
    {
        return Err(format!(
            "invalid target name {name:?}: 1 to {MAX_TARGET_NAME} letters, digits, '.', '_' or '-', not starting with '.' or '-'"
        ));
    }
    Ok(())
}

fn parse_ssh(rest: &str) -> Result<Destination, String> {
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => return Err(format!("missing PATH (expected {SSH_FORM})")),
    };
    let path = format!("/{}", path.trim_start_matches('/'));
    if path == "/" {
        return Err(format!("missing PATH (expected {SSH_FORM})"));
    }
    let (user, host_port) = match authority.rsplit_once('@') {
        Some(("", _)) => return Err(format!("empty user before '@' (expected {SSH_FORM})")),
        Some((user, host_port)) => (Some(user.to_string()), host_port),
        None => (None, authority),
    };
    let (host, port) = parse_host_port(host_port, SSH_FORM)?;
    Ok(Destination::Ssh {
        user,
        host,
        port,
        path,
    })
}

/// Parses `HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT`; returns the lowercased host.
fn parse_host_port(text: &str, form: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = match text.strip_prefix('[') {
        Some(inner) => split_bracketed(inner)?,
        None => split_plain(text)?,
    };
    if host.is_empty() {
        return Err(format!("missing host (expected {form})"));
    }
    if host.starts_with('-') {
        return Err(format!("host {host:?} must not start with '-'"));
    }
    if host.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!("host {host:?} contains whitespace"));
    }
    let port = port.map(parse_port).transpose()?;
    Ok((host.to_ascii_lowercase(), port))
}

fn split_bracketed(inner: &str) -> Result<(String, Option<&str>), String> {
    let (addr, after) = inner
        .split_once(']')
        .ok_or_else(|| "missing ']' after IPv6 address".to_string())?;
    let addr: Ipv6Addr = addr
        .parse()
        .map_err(|_| format!("invalid IPv6 address {addr:?}"))?;
    let port = match after {
        "" => None,
        _ => Some(
            after
                .strip_prefix(':')
                .ok_or_else(|| format!("unexpected {after:?} after ']'"))?,
        ),
    };
    Ok((addr.to_string(), port))
}

fn split_plain(text: &str) -> Result<(String, Option<&str>), String> {
    match text.split_once(':') {
        Some((_, rest)) if rest.contains(':') => {
            Err("IPv6 addresses must be written in brackets, e.g. [::1]:9000".to_string())
        }
        Some((host, port)) => Ok((host.to_string(), Some(port))),
        None => Ok((text.to_string(), None)),
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() {
        return Err("empty port after ':'".to_string());
    }
    match text.parse::<u16>() {
        Ok(port) if port > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(format!("invalid port {text:?} (expected 1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_spelling_per_destination() {
        let canonical = |text: &str| parse_destination(text).unwrap().canonical().to_string();
        assert_eq!(
            canonical("tls://Backup.EXAMPLE:7300/Web1"),
            "tls://backup.example:7300/Web1"
        );
        assert_eq!(
            canonical("ssh://root@Host:22/srv/x"),
            "ssh://root@host/srv/x"
        );
        assert_eq!(
            canonical("ssh://root@host:2222/srv/x"),
            "ssh://root@host:2222/srv/x"
        );
        assert_eq!(canonical("/srv/x"), "/srv/x");
    }

    fn ok(text: &str) -> Destination {
        parse_destination(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> String {
        match parse_destination(text) {
            Ok(d) => panic!("{text} parsed as {d:?}"),
            Err(e) => e,
        }
    }

    fn tls(host: &str, port: u16) -> Destination {
        Destination::Tls {
            host: host.into(),
            port,
            name: None,
        }
    }

    fn ssh(user: Option<&str>, host: &str, port: Option<u16>, path: &str) -> Destination {
        Destination::Ssh {
            user: user.map(Into::into),
            host: host.into(),
            port,
            path: path.into(),
        }
    }

    #[test]
    fn local_paths() {
        assert_eq!(ok("/dev/sdb"), Destination::Local("/dev/sdb".into()));
        assert_eq!(ok("img.raw"), Destination::Local("img.raw".into()));
        assert_eq!(ok("tls:host:1"), Destination::Local("tls:host:1".into()));
        assert_eq!(ok("./a://b"), Destination::Local("./a://b".into()));
        assert_eq!(err(""), r#"invalid DEST "": empty path"#);
    }

    #[test]
    fn tls_destinations() {
        assert_eq!(ok("tls://host:9000"), tls("host", 9000));
        assert_eq!(ok("TLS://Host.Example:1"), tls("host.example", 1));
        assert_eq!(ok("tls://10.0.0.1:65535"), tls("10.0.0.1", 65535));
        assert_eq!(ok("tls://[::1]:9000"), tls("::1", 9000));
        assert_eq!(ok("tls://[0:0::1]:9000/"), tls("::1", 9000));
    }

    #[test]
    fn tls_errors() {
        assert_eq!(
            err("tls://host"),
            r#"invalid DEST "tls://host": missing port (expected tls://HOST:PORT[/NAME])"#
        );
        assert!(err("tls://host:").contains("empty port"));
        assert!(err("tls://host:0").contains(r#"invalid port "0" (expected 1-65535)"#));
        assert!(err("tls://host:65536").contains("invalid port"));
        assert!(err("tls://host:+80").contains("invalid port"));
        assert!(err("tls://:9000").contains("missing host"));
        assert!(err("tls://::1:9000").contains("brackets"));
        assert!(err("tls://[::1]").contains("missing port"));
        assert!(err("tls://[::1:9000").contains("missing ']'"));
        assert!(err("tls://[nope]:9000").contains("invalid IPv6 address"));
        assert_eq!(
            ok("tls://host:9000/web-1"),
            Destination::Tls {
                host: "host".into(),
                port: 9000,
                name: Some("web-1".into())
            }
        );
        assert_eq!(
            ok("tls://host:9000/web-1").to_string(),
            "tls://host:9000/web-1"
        );
        assert!(err("tls://host:9000/x/y").contains("invalid target name \"x/y\""));
        assert!(err("tls://host:9000/.hidden").contains("invalid target name"));
        assert!(err("tls://u@host:9000").contains("user"));
    }

    #[test]
    fn ssh_destinations() {
        assert_eq!(ok("ssh://h/dev/sdb"), ssh(None, "h", None, "/dev/sdb"));
        assert_eq!(ok("ssh://h//tmp/x"), ssh(None, "h", None, "/tmp/x"));
        assert_eq!(
            ok("ssh://root@H:2222/dev/vg/lv"),
            ssh(Some("root"), "h", Some(2222), "/dev/vg/lv")
        );
        assert_eq!(
            ok("ssh://me@[::1]:22/a b"),
            ssh(Some("me"), "::1", Some(22), "/a b")
        );
        assert_eq!(ok("ssh://[::1]/x"), ssh(None, "::1", None, "/x"));
    }

    #[test]
    fn ssh_errors() {
        assert_eq!(
            err("ssh://host"),
            r#"invalid DEST "ssh://host": missing PATH (expected ssh://[USER@]HOST[:PORT]/PATH)"#
        );
        assert!(err("ssh://host/").contains("missing PATH"));
        assert!(err("ssh:///x").contains("missing host"));
        assert!(err("ssh://@h/x").contains("empty user"));
        assert!(err("ssh://h:0/x").contains("invalid port"));
        assert!(err("ssh://h:/x").contains("empty port"));
        assert!(err("ssh://-oProxyCommand=x/y").contains("must not start with '-'"));
    }

    #[test]
    fn unknown_scheme() {
        assert_eq!(
            err("http://h/x"),
            "invalid DEST \"http://h/x\": unknown scheme \"http\" \
             (expected tls://HOST:PORT[/NAME], ssh://[USER@]HOST[:PORT]/PATH or a local path)"
        );
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        let cases = [
            ("/dev/sdb", "/dev/sdb"),
            ("TLS://Host:9000/", "tls://host:9000"),
            ("tls://[0::1]:9000", "tls://[::1]:9000"),
            ("ssh://h//dev/sdb", "ssh://h/dev/sdb"),
            ("ssh://u@h:22/x", "ssh://u@h:22/x"),
            ("ssh://u@[::1]/x", "ssh://u@[::1]/x"),
        ];
        for (input, canonical) in cases {
            let parsed = ok(input);
            assert_eq!(parsed.to_string(), canonical, "{input}");
            assert_eq!(ok(canonical), parsed, "{input}");
        }
    }
}
