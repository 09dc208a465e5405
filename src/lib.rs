//! journalgate: a journal-report gateway. Receives journal reports over SMTP into per-mailbox,
//! encrypted spools and lets archiving servers collect them over POP3 and IMAP.
//!
//! The binary (`src/main.rs`) is a thin shell around [`cli`] and [`server`]; the library form
//! exists so that fuzz targets and tests can drive the protocol sessions directly.

pub mod accounts;
pub mod acme;
pub mod admin;
pub mod alerts;
pub mod archive;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod console;
pub mod context;
pub mod crypto;
pub mod fsutil;
pub mod imap;
pub mod index;
pub mod journal;
pub mod mailbox;
pub mod message;
pub mod mime;
pub mod net;
pub mod pop3;
pub mod server;
pub mod smtp;
pub mod spool;
pub mod store;
pub mod telemetry;
pub mod textindex;
pub mod tls;
pub mod trace;
