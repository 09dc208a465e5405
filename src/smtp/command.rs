//! SMTP command parsing (RFC 5321 §4.1), separate from I/O so it can be unit-tested and fuzzed.

/// One parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    StartTls,
    Mail { from: String, params: Vec<Param> },
    Rcpt { to: String, params: Vec<Param> },
    Data,
    Bdat { size: u64, last: bool },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    Auth,
}

/// An ESMTP parameter: upper-cased keyword and optional value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub key: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("command not recognized")]
    Unknown,
    #[error("{0}")]
    Syntax(&'static str),
}

/// Parses a command line (without its CRLF).
pub fn parse(line: &str) -> Result<Command, ParseError> {
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let rest = rest.trim();
    match verb.to_ascii_uppercase().as_str() {
        "HELO" => domain_arg(rest).map(Command::Helo),
        "EHLO" => domain_arg(rest).map(Command::Ehlo),
        "STARTTLS" => no_arg(rest, Command::StartTls),
        "MAIL" => {
            let (path, params) = path_arg(rest, "FROM:")?;
            Ok(Command::Mail { from: path, params })
        }
        "RCPT" => {
            let (path, params) = path_arg(rest, "TO:")?;
            if path.is_empty() {
                return Err(ParseError::Syntax("empty recipient"));
            }
            Ok(Command::Rcpt { to: path, params })
        }
        "DATA" => no_arg(rest, Command::Data),
        "BDAT" => bdat_args(rest),
        "RSET" => no_arg(rest, Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_arg(rest, Command::Quit),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "HELP" => Ok(Command::Help),
        "AUTH" => Ok(Command::Auth),
        _ => Err(ParseError::Unknown),
    }
}

fn no_arg(rest: &str, cmd: Command) -> Result<Command, ParseError> {
    if rest.is_empty() {
        Ok(cmd)
    } else {
        Err(ParseError::Syntax("this command takes no argument"))
    }
}

fn domain_arg(rest: &str) -> Result<String, ParseError> {
    let domain = rest.split_whitespace().next().unwrap_or("");
    if domain.is_empty() {
        return Err(ParseError::Syntax(
            "a domain name or address literal is required",
        ));
    }
    if domain.len() > 255 || domain.chars().any(|c| c.is_control()) {
        return Err(ParseError::Syntax("invalid domain"));
    }
    Ok(domain.to_owned())
}

fn bdat_args(rest: &str) -> Result<Command, ParseError> {
    let mut words = rest.split_whitespace();
    let size = words
        .next()
        .and_then(|w| w.parse::<u64>().ok())
        .ok_or(ParseError::Syntax("BDAT needs a chunk size"))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(ParseError::Syntax("BDAT takes a size and optionally LAST")),
    };
    if words.next().is_some() {
        return Err(ParseError::Syntax("BDAT takes a size and optionally LAST"));
    }
    Ok(Command::Bdat { size, last })
}

/// Parses `FROM:<path> params` / `TO:<path> params`; returns the address without brackets
/// (and without a source route).
fn path_arg(rest: &str, keyword: &str) -> Result<(String, Vec<Param>), ParseError> {
    let head = rest.get(..keyword.len()).unwrap_or("");
    if !head.eq_ignore_ascii_case(keyword) {
        return Err(ParseError::Syntax(if keyword == "FROM:" {
            "expected MAIL FROM:<address>"
        } else {
            "expected RCPT TO:<address>"
        }));
    }
    let rest = rest[keyword.len()..].trim_start();
    let (path, params) = if let Some(inner) = rest.strip_prefix('<') {
        let close = closing_bracket(inner).ok_or(ParseError::Syntax("unterminated address"))?;
        (&inner[..close], &inner[close + 1..])
    } else {
        // Lenient: a bare address without angle brackets.
        match rest.find(' ') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        }
    };
    let path = strip_source_route(path);
    if path.len() > 512 {
        return Err(ParseError::Syntax("address too long"));
    }
    if path.chars().any(|c| c.is_control() || c == ' ') && !path.starts_with('"') {
        return Err(ParseError::Syntax("invalid address"));
    }
    if !path.is_empty() && !path.contains('@') && !path.eq_ignore_ascii_case("postmaster") {
        return Err(ParseError::Syntax("address must be local-part@domain"));
    }
    Ok((path.to_owned(), parse_params(params)?))
}

/// Index of the `>` that closes a path, honouring quoted local parts.
fn closing_bracket(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

fn strip_source_route(path: &str) -> &str {
    if path.starts_with('@') {
        path.split_once(':').map(|(_, addr)| addr).unwrap_or(path)
    } else {
        path
    }
}

fn parse_params(s: &str) -> Result<Vec<Param>, ParseError> {
    s.split_whitespace()
        .map(|word| {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v.to_owned())),
                None => (word, None),
            };
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(ParseError::Syntax("invalid parameter"));
            }
            Ok(Param {
                key: key.to_ascii_uppercase(),
                value,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_from_variants() {
        assert_eq!(
            parse("MAIL FROM:<>").unwrap(),
            Command::Mail {
                from: String::new(),
                params: vec![]
            }
        );
        assert_eq!(
            parse("mail from: <a@b.example> SIZE=100 BODY=8BITMIME").unwrap(),
            Command::Mail {
                from: "a@b.example".into(),
                params: vec![
                    Param {
                        key: "SIZE".into(),
                        value: Some("100".into())
                    },
                    Param {
                        key: "BODY".into(),
                        value: Some("8BITMIME".into())
                    },
                ]
            }
        );
        assert_eq!(
            parse("MAIL FROM:<@relay.example:a@b.example>").unwrap(),
            Command::Mail {
                from: "a@b.example".into(),
                params: vec![]
            }
        );
        assert_eq!(
            parse("MAIL FROM:<\"odd >user\"@b.example>").unwrap(),
            Command::Mail {
                from: "\"odd >user\"@b.example".into(),
                params: vec![]
            }
        );
        assert!(parse("MAIL <a@b>").is_err());
        assert!(parse("MAIL FROM:<a@b").is_err());
    }

    #[test]
    fn rcpt_and_bdat() {
        assert_eq!(
            parse("RCPT TO:<Mbx-1@GW.test>").unwrap(),
            Command::Rcpt {
                to: "Mbx-1@GW.test".into(),
                params: vec![]
            }
        );
        assert!(parse("RCPT TO:<>").is_err());
        assert_eq!(
            parse("BDAT 10 LAST").unwrap(),
            Command::Bdat {
                size: 10,
                last: true
            }
        );
        assert_eq!(
            parse("bdat 0").unwrap(),
            Command::Bdat {
                size: 0,
                last: false
            }
        );
        assert!(parse("BDAT x").is_err());
        assert!(parse("BDAT 1 FIRST").is_err());
    }

    #[test]
    fn other_verbs() {
        assert_eq!(
            parse("EHLO client.example").unwrap(),
            Command::Ehlo("client.example".into())
        );
        assert!(parse("EHLO").is_err());
        assert_eq!(parse("quit").unwrap(), Command::Quit);
        assert_eq!(parse("FROB x"), Err(ParseError::Unknown));
        assert_eq!(parse(""), Err(ParseError::Unknown));
        assert!(parse("DATA now").is_err());
    }
}
