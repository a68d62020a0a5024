//! Opt-in stage timing (`INFDIT_PROFILE=1`). Each stage synchronises the device before
//! and after, so its time is what the device spent on it (at the cost of overlap between
//! stages); stages nest, so an outer stage includes its inner ones. Off, a stage is a
//! plain call.

use candle_core::{Device, Result};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Stage name, total time, calls; in first-seen order.
static TIMES: Mutex<Vec<(&'static str, Duration, usize)>> = Mutex::new(Vec::new());

pub fn enabled() -> bool {
    crate::switches::PROFILE
        .get()
        .is_some_and(|v| !v.is_empty() && v != "0")
}

/// Runs `f` as the stage `name` on `device`.
pub fn stage<T>(name: &'static str, device: &Device, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !enabled() {
        return f();
    }
    device.synchronize()?;
    let start = Instant::now();
    let out = f()?;
    device.synchronize()?;
    let took = start.elapsed();
    let mut times = TIMES.lock().expect("profile lock");
    match times.iter_mut().find(|(n, _, _)| *n == name) {
        Some(entry) => {
            entry.1 += took;
            entry.2 += 1;
        }
        None => times.push((name, took, 1)),
    }
    Ok(out)
}

/// The table of stages so far (`None` when profiling is off or nothing ran).
pub fn report() -> Option<String> {
    let times = TIMES.lock().expect("profile lock");
    if !enabled() || times.is_empty() {
        return None;
    }
    let mut s = format!("{:<28} {:>10} {:>8}\n", "stage", "total s", "calls");
    for (name, total, calls) in times.iter() {
        s += &format!("{name:<28} {:>10.4} {calls:>8}\n", total.as_secs_f64());
    }
    Some(s)
}
