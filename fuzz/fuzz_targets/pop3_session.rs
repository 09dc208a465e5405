//! Feeds arbitrary bytes to a real POP3 session in the TRANSACTION state (the fuzz mailbox
//! open, its fixtures listed) over an in-memory pipe; each line is also given to the command
//! parser alone. The session must end cleanly at EOF: no panic, no hang.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|b| *b == b'\n') {
        let _ = journalgate::pop3::command::parse(&String::from_utf8_lossy(line));
    }
    let env = common::env();
    common::refill(env);
    let (state, login) = (env.state.clone(), env.login.clone());
    common::drive(env, b"", data, move |stream| {
        journalgate::pop3::serve_preauth(stream, "127.0.0.1:1".parse().unwrap(), state, login)
    });
});
