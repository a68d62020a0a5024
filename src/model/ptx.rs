//! Entry points of compiled PTX. The `.cu` files decide which shapes get a kernel; the Rust
//! side asks the PTX whether one exists, so no list of shapes has to be kept in step in two
//! languages.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};

/// Whether the PTX text `ptx` defines a kernel named `name`. Each PTX is parsed once.
pub fn has_entry(ptx: &'static str, name: &str) -> bool {
    static PARSED: OnceLock<Mutex<HashMap<usize, HashSet<&'static str>>>> = OnceLock::new();
    let mut parsed = PARSED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    parsed
        .entry(ptx.as_ptr() as usize)
        .or_insert_with(|| entry_points(ptx))
        .contains(name)
}

/// The names of the kernels (`.entry NAME(`) that `ptx` defines.
pub fn entry_points(ptx: &str) -> HashSet<&str> {
    ptx.lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once(".entry ")?;
            Some(rest.split(['(', ' ']).next()?.trim())
        })
        .filter(|name| !name.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_entry_and_nothing_else() {
        let ptx = "//\n.version 8.0\n.target sm_80\n\
                   .visible .entry ln_modulate_vec5_bf16(\n\t.param .u64 p0\n)\n{\n}\n\
                   .func (.reg .b32 r) helper(\n)\n\
                   .visible .entry flash_attention_w4_bf16_d80_paged(\n)\n\
                   .entry local_kernel (\n)\n";
        let got = entry_points(ptx);
        let want: HashSet<&str> = [
            "ln_modulate_vec5_bf16",
            "flash_attention_w4_bf16_d80_paged",
            "local_kernel",
        ]
        .into();
        assert_eq!(got, want);
        let ptx: &'static str = Box::leak(ptx.to_string().into_boxed_str());
        assert!(has_entry(ptx, "local_kernel"));
        assert!(!has_entry(ptx, "helper"));
    }
}
