//! Finds libgsink for linking, in this order:
//!  1. the directory in the environment variable GSINK_LIB_DIR;
//!  2. `pkg-config --libs-only-L gsink` (the pkg-config binary; no crates);
//!  3. a meson build directory of this repository (build*/lib).
//! The directory found is exported to dependent build scripts as
//! DEP_GSINK_LIB_DIR so that they can set an rpath for tests and examples.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn has_lib(dir: &Path) -> bool {
    dir.join("libgsink.so").exists() || dir.join("libgsink.dylib").exists() || dir.join("libgsink.a").exists()
}

fn from_env() -> Option<PathBuf> {
    let dir = PathBuf::from(env::var_os("GSINK_LIB_DIR")?);
    if !has_lib(&dir) {
        println!("cargo:warning=GSINK_LIB_DIR={} holds no libgsink", dir.display());
    }
    Some(dir)
}

fn from_pkg_config() -> Option<PathBuf> {
    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_string());
    let out = Command::new(pkg_config).args(["--libs-only-L", "gsink"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let dirs: Vec<PathBuf> = text
        .split_whitespace()
        .filter_map(|a| a.strip_prefix("-L"))
        .map(PathBuf::from)
        .collect();
    // An empty -L list means libgsink is on the default linker path.
    Some(dirs.into_iter().find(|d| has_lib(d)).unwrap_or_default())
}

fn from_repo_build_dir() -> Option<PathBuf> {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR")?);
    let root = manifest.parent()?.parent()?.parent()?;
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("build")))
        .map(|p| p.join("lib"))
        .filter(|p| has_lib(p))
        .collect();
    candidates.sort();
    // Prefer plain "build" when present, else the first build* directory.
    candidates.iter().find(|p| p.parent().and_then(|b| b.file_name()) == Some("build".as_ref()))
        .cloned()
        .or_else(|| candidates.into_iter().next())
}

fn main() {
    println!("cargo:rerun-if-env-changed=GSINK_LIB_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG");
    println!("cargo:rerun-if-changed=build.rs");

    let dir = from_env().or_else(from_pkg_config).or_else(from_repo_build_dir);
    match dir {
        Some(d) if d.as_os_str().is_empty() => {}
        Some(d) => {
            println!("cargo:rustc-link-search=native={}", d.display());
            println!("cargo:lib_dir={}", d.display());
        }
        None => println!(
            "cargo:warning=libgsink not found (set GSINK_LIB_DIR, install gsink.pc, or build with meson); linking with -lgsink on the default path"
        ),
    }
    println!("cargo:rustc-link-lib=dylib=gsink");
}
