//! Feeds arbitrary bytes to a real IMAP session (PREAUTH, INBOX selected, a few messages
//! in the spool) over an in-memory pipe. The session must answer and end cleanly at EOF:
//! no panic, no hang.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let env = common::env();
    common::refill(env);
    let (state, account) = (
        env.state.clone(),
        journalgate::accounts::gateway(
            &env.state,
            env.login.clone(),
            "imap",
            std::net::Ipv4Addr::LOCALHOST.into(),
        ),
    );
    common::drive(env, b"s1 SELECT INBOX\r\n", data, move |stream| {
        journalgate::imap::serve_connection(
            stream,
            "127.0.0.1:1".parse().unwrap(),
            state,
            Some(account),
        )
    });
});
