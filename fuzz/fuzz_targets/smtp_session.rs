//! Feeds arbitrary bytes to a real SMTP session over an in-memory pipe, after a greeting and
//! a transaction opened to the fuzz mailbox, so DATA, BDAT and every command parser are
//! reached; each line is also given to the command parser alone. The session must end
//! cleanly at EOF: no panic, no hang.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|b| *b == b'\n') {
        let _ = journalgate::smtp::command::parse(&String::from_utf8_lossy(line));
    }
    let env = common::env();
    common::refill(env);
    let prefix = format!(
        "EHLO fuzz\r\nMAIL FROM:<>\r\nRCPT TO:<{}@localhost>\r\n",
        env.login.record.id
    );
    let state = env.state.clone();
    common::drive(env, prefix.as_bytes(), data, move |stream| {
        journalgate::smtp::serve_connection(stream, "127.0.0.1:1".parse().unwrap(), state)
    });
});
