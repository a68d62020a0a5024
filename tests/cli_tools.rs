//! The tool subcommands (`eval`, `bench`, `convert`, `inspect`, `train`) refuse what they
//! cannot do with a message, never a panic, and report failures in their exit status.

mod common;
use std::path::Path;
use std::process::{Command, Output};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn errors_are_printed_without_backtraces() {
    let o = Command::new(env!("CARGO_BIN_EXE_infdit"))
        .args(["inspect", s(&common::fixture("pickles/corrupt.pt"))])
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("is not a readable PyTorch checkpoint"),
        "{err}"
    );
}
