//! The tool subcommands (`eval`, `bench`, `convert`, `inspect`, `train`) refuse what they
//! cannot do with a message, never a panic, and report failures in their exit status.

mod common;
use std::path::Path;
use std::process::{Command, Output};

fn infdit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infdit"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `args`, which must fail with exit status 1 (an error, not a panic's 101 or a usage
/// error's 2), and returns the standard error.
fn fails(args: &[&str]) -> String {
    let o = infdit(args);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
    stderr(&o)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn bench_engine_checks_its_arguments_and_fails_when_a_case_fails() {
    for args in [
        &["--sizes", "abc"][..],
        &["--sizes", "100"],
        &["--max-memory", "abc"],
        &["--config", "nonexistent.json"],
        &["--batches", "0"],
    ] {
        let o = infdit(&[&["bench", "engine"][..], args].concat());
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            o.stdout.is_empty(),
            "{args:?}: checked before any case runs"
        );
    }
    // A budget too small for any batch: the case fails, and so does the bench.
    let o = infdit(&[
        "bench",
        "engine",
        "--sizes",
        "128",
        "--batches",
        "auto",
        "--max-memory",
        "1K",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("failed"));
    assert!(stderr(&o).contains("1 of 1 cases failed"), "{}", stderr(&o));
}

#[test]
fn convert_writes_safetensors_files_with_ordinary_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::fixture("tiny/weights.safetensors");
    for out in ["-", "out.bin", "out"] {
        let target = dir.path().join(out);
        let err = fails(&[
            "convert",
            s(&input),
            if out == "-" { out } else { s(&target) },
        ]);
        assert!(err.contains(".safetensors"), "{out}: {err}");
        assert!(!target.exists() && !Path::new("-").exists());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let out = dir.path().join("w.safetensors");
        for _ in 0..2 {
            // The second time in place.
            let from = if out.exists() {
                out.clone()
            } else {
                input.clone()
            };
            let o = infdit(&["convert", s(&from), s(&out)]);
            assert!(o.status.success(), "{}", stderr(&o));
            assert_eq!(mode(&out), mode(&plain));
        }
    }
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
