use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use infdit::cli::{Cli, Command};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// mimalloc's `purge_delay` option: -1 keeps freed memory mapped for reuse.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // Error messages are for users: candle attaches a backtrace to its errors whenever
    // RUST_BACKTRACE is set, and its message would then carry a dozen stack frames.
    // RUST_LIB_BACKTRACE governs such captured backtraces (only); panics still print
    // theirs under RUST_BACKTRACE. A value the user set is kept.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // No other thread exists yet to read the environment concurrently.
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    // Tensors are large and short-lived; returning their memory to the OS after every op
    // made a third of CPU time go to zeroing freshly faulted pages.
    // SAFETY: sets a process-wide allocator option; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // Like other command-line tools, end quietly when the reader of stdout goes away
    // (`infdit inspect … | head`) instead of panicking on the broken pipe.
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // An interrupted run exits at once, as usual, but first removes the temporary output
    // files it was writing (an exiting process runs no destructors).
    if let Err(e) = ctrlc::set_handler(|| {
        infdit::fsutil::remove_partial_files();
        eprintln!("interrupted");
        std::process::exit(130);
    }) {
        tracing::debug!("no interrupt handler: {e}");
    }
    // `println!` panics when standard output fails (a full disk behind `> file`); that is
    // an error to report, not a crash.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if let Some(cause) = message.strip_prefix("failed printing to stdout: ") {
            infdit::fsutil::remove_partial_files();
            eprintln!("error: cannot write to standard output: {cause}");
            std::process::exit(1);
        }
        default_hook(info)
    }));
    // AVIF files are decoded in a child process of this program, so that a decoder crash
    // on a damaged file costs only that file.
    if let Ok(exe) = std::env::current_exe() {
        infdit::imageops::io::decode_avif_in_child_process(exe);
    }
    let cli = Cli::parse();
    let quiet = matches!(&cli.command, Command::Upscale(args) if args.quiet);
    let level = match (cli.verbose, quiet) {
        (0, true) => "error",
        (0, false) => "warn",
        (1, _) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("INFDIT_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    // Colour only on a terminal (not in logs or pipes), and never under NO_COLOR; the
    // module path only when asked for detail.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(cli.verbose > 0)
        .without_time()
        .init();
    match cli.run() {
        Ok(code) => code,
        Err(e) => {
            let text = infdit::cli::error_text(&e);
            eprintln!("error: {}", infdit::cli::printable(&text, true));
            infdit::cli::failure_status(&e)
        }
    }
}
