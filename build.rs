//! With the `cuda` feature, compiles the project's own CUDA kernels to PTX with nvcc.
//! The PTX targets compute capability 8.0 so one build runs on every GPU from Ampere on
//! (the driver JIT-compiles it for the card at first use); the attention kernels are also
//! built for sm_90a, for their Hopper-only variant.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for var in ["CUDA_HOME", "CUDA_PATH", "NVCC"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| {
        ["CUDA_HOME", "CUDA_PATH"]
            .iter()
            .filter_map(|v| std::env::var(v).ok())
            .map(|home| format!("{home}/bin/nvcc"))
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| "nvcc".into())
    });
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // The attention kernels also build for sm_90a, whose PTX adds the Hopper (wgmma)
    // entry points; it loads only on compute capability 9.0 devices.
    for (name, arch, out) in [
        ("flash_attention", "compute_80", "flash_attention"),
        ("flash_attention", "compute_90a", "flash_attention_sm90"),
        ("fused_ops", "compute_80", "fused_ops"),
    ] {
        let src = format!("src/model/{name}.cu");
        println!("cargo:rerun-if-changed={src}");
        let status = std::process::Command::new(&nvcc)
            .args(["--ptx", &format!("-arch={arch}"), "-O3", "-std=c++17", "-o"])
            .arg(out_dir.join(format!("{out}.ptx")))
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {nvcc} (set CUDA_HOME or NVCC): {e}"));
        assert!(status.success(), "nvcc failed on {src} for {arch}");
    }
}
