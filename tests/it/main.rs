//! The single integration-test binary: every test starts a real kartei server on 127.0.0.1 and speaks
//! HTTPS to it (see support/).

mod support;

mod accounts;
mod api;
mod cards;
mod clients;
mod conditional;
mod corpus;
mod crash;
mod discovery;
mod files;
mod fuzz_replay;
mod hostile;
mod import;
mod privacy;
mod proppatch;
mod reliability;
mod reports;
mod sync;
