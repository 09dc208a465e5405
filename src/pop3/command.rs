//! POP3 command parsing (RFC 1939, 2449, 2595, 5034), separate from I/O.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Capa,
    Stls,
    User(String),
    Pass(String),
    /// `AUTH` with no mechanism lists them; otherwise mechanism and optional initial response.
    Auth(Option<(String, Option<String>)>),
    Stat,
    List(Option<usize>),
    Uidl(Option<usize>),
    Retr(usize),
    Top(usize, usize),
    Dele(usize),
    Rset,
    Noop,
    Quit,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown command")]
    Unknown,
    #[error("{0}")]
    Syntax(&'static str),
}

pub fn parse(line: &str) -> Result<Command, ParseError> {
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let args: Vec<&str> = rest.split_whitespace().collect();
    match verb.to_ascii_uppercase().as_str() {
        "CAPA" => none(&args, Command::Capa),
        "STLS" => none(&args, Command::Stls),
        "USER" => match args.as_slice() {
            [name] => Ok(Command::User((*name).to_owned())),
            _ => Err(ParseError::Syntax("USER takes one argument")),
        },
        // The password is the rest of the line: it may contain spaces.
        "PASS" if !rest.is_empty() => Ok(Command::Pass(rest.to_owned())),
        "PASS" => Err(ParseError::Syntax("PASS takes one argument")),
        "AUTH" => match args.as_slice() {
            [] => Ok(Command::Auth(None)),
            [mech] => Ok(Command::Auth(Some((mech.to_ascii_uppercase(), None)))),
            [mech, ir] => Ok(Command::Auth(Some((
                mech.to_ascii_uppercase(),
                Some((*ir).to_owned()),
            )))),
            _ => Err(ParseError::Syntax(
                "AUTH takes a mechanism and an optional initial response",
            )),
        },
        "STAT" => none(&args, Command::Stat),
        "LIST" => optional_number(&args).map(Command::List),
        "UIDL" => optional_number(&args).map(Command::Uidl),
        "RETR" => one_number(&args).map(Command::Retr),
        "DELE" => one_number(&args).map(Command::Dele),
        "TOP" => match args.as_slice() {
            [n, lines] => Ok(Command::Top(
                number(n)?,
                lines
                    .parse()
                    .map_err(|_| ParseError::Syntax("invalid line count"))?,
            )),
            _ => Err(ParseError::Syntax(
                "TOP takes a message number and a line count",
            )),
        },
        "RSET" => none(&args, Command::Rset),
        "NOOP" => none(&args, Command::Noop),
        "QUIT" => none(&args, Command::Quit),
        _ => Err(ParseError::Unknown),
    }
}

fn none(args: &[&str], cmd: Command) -> Result<Command, ParseError> {
    if args.is_empty() {
        Ok(cmd)
    } else {
        Err(ParseError::Syntax("this command takes no argument"))
    }
}

fn number(s: &str) -> Result<usize, ParseError> {
    s.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or(ParseError::Syntax("invalid message number"))
}

fn one_number(args: &[&str]) -> Result<usize, ParseError> {
    match args {
        [n] => number(n),
        [] => Err(ParseError::Syntax("a message number is required")),
        _ => Err(ParseError::Syntax(
            "one message number only: an extra argument was given",
        )),
    }
}

fn optional_number(args: &[&str]) -> Result<Option<usize>, ParseError> {
    match args {
        [] => Ok(None),
        [n] => number(n).map(Some),
        _ => Err(ParseError::Syntax("too many arguments")),
    }
}

/// Decodes a base64 SASL PLAIN response into (user, password).
pub fn decode_plain(b64: &str) -> Option<(String, String)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    crate::auth::parse_sasl_plain(&raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse("retr 3").unwrap(), Command::Retr(3));
        assert_eq!(parse("TOP 1 0").unwrap(), Command::Top(1, 0));
        assert_eq!(parse("PASS a b c").unwrap(), Command::Pass("a b c".into()));
        assert_eq!(parse("LIST").unwrap(), Command::List(None));
        assert!(parse("RETR 0").is_err());
        assert!(parse("RETR x").is_err());
        assert!(parse("DELE").is_err());
        // curl's `pop3://host/1 -X 'DELE 1'` sends this: say what is wrong.
        assert_eq!(
            parse("DELE 1 1"),
            Err(ParseError::Syntax(
                "one message number only: an extra argument was given"
            ))
        );
        assert_eq!(parse("XYZZY"), Err(ParseError::Unknown));
        assert_eq!(
            parse("AUTH plain AGEAYg==").unwrap(),
            Command::Auth(Some(("PLAIN".into(), Some("AGEAYg==".into()))))
        );
    }

    #[test]
    fn sasl_plain() {
        use base64::Engine;
        let enc = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            decode_plain(&enc(b"\0user\0pw")),
            Some(("user".into(), "pw".into()))
        );
        assert_eq!(
            decode_plain(&enc(b"user\0user\0pw")),
            Some(("user".into(), "pw".into()))
        );
        assert_eq!(decode_plain(&enc(b"other\0user\0pw")), None);
        assert_eq!(decode_plain("!!!"), None);
    }
}
