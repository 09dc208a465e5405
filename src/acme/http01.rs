//! The HTTP-01 responder: a tiny HTTP/1.1 listener that knows only
//! `GET /.well-known/acme-challenge/<token>`.

use super::*;

pub(super) fn bind_http(addr: &str) -> Result<TcpListener, String> {
    if addr.trim().is_empty() {
        return Err("acme.http_listen is empty".into());
    }
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("acme.http_listen {addr:?}: {e}"))?;
    let listener = std::net::TcpListener::bind(addr).map_err(|e| format!("{addr}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("{addr}: {e}"))?;
    TcpListener::from_std(listener).map_err(|e| format!("{addr}: {e}"))
}

pub(super) async fn serve_http(listener: TcpListener, tokens: Tokens) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let tokens = tokens.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(HTTP_TIMEOUT, answer_http(stream, &tokens)).await;
        });
    }
}

pub(super) async fn answer_http(mut stream: TcpStream, tokens: &Tokens) -> io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let complete = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break false;
        }
        head.extend_from_slice(&buf[..n]);
        if memchr::memmem::find(&head, b"\r\n\r\n").is_some()
            || memchr::memmem::find(&head, b"\n\n").is_some()
        {
            break true;
        }
        if head.len() > HTTP_MAX_HEAD {
            break false;
        }
    };
    let response = if complete {
        http_response(&head, |token| lock(tokens).get(token).cloned())
    } else {
        http_reply(400, "Bad Request", "bad request\n")
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The answer to one HTTP/1.x request head: the key authorization for a known challenge
/// token, 404 for anything else.
pub(super) fn http_response(head: &[u8], lookup: impl Fn(&str) -> Option<String>) -> String {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).unwrap_or_default().trim_end();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return http_reply(400, "Bad Request", "bad request\n");
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return http_reply(400, "Bad Request", "bad request\n");
    }
    let token = target.strip_prefix("/.well-known/acme-challenge/");
    let valid_token = token.filter(|t| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    match (method, valid_token.and_then(&lookup)) {
        ("GET", Some(key_authorization)) => http_reply(200, "OK", &key_authorization),
        _ => http_reply(404, "Not Found", "not found\n"),
    }
}

pub(super) fn http_reply(code: u16, reason: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

// ------------------------------------------------------------------------- CLI
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_only_known_tokens() {
        let lookup = |t: &str| (t == "abc-_1").then(|| "abc-_1.thumb".to_string());
        let ok = http_response(
            b"GET /.well-known/acme-challenge/abc-_1 HTTP/1.1\r\nHost: x\r\n\r\n",
            lookup,
        );
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nabc-_1.thumb"), "{ok}");
        for head in [
            &b"GET /.well-known/acme-challenge/other HTTP/1.1\r\n\r\n"[..],
            b"GET /.well-known/acme-challenge/ HTTP/1.1\r\n\r\n",
            b"GET /.well-known/acme-challenge/../x HTTP/1.1\r\n\r\n",
            b"POST /.well-known/acme-challenge/abc-_1 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
        ] {
            assert!(http_response(head, lookup).starts_with("HTTP/1.1 404 "));
        }
        assert!(http_response(b"garbage\r\n\r\n", lookup).starts_with("HTTP/1.1 400 "));
        assert!(http_response(b"\xff\xfe\r\n\r\n", lookup).starts_with("HTTP/1.1 400 "));
    }
}
