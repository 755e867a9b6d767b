//! `cargo xtask bindings`: the Kotlin and Swift bindings of `qim-sdk-ffi`
//! and the host's native library, plus the check that every exported item
//! made it into both languages. `cargo xtask test` also runs the Kotlin
//! tests (`kotlin.rs`) against these bindings.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{cargo, run};

/// The library's base name (`libqim_sdk_ffi.so`, `qim_sdk_ffi.swift`, …).
pub(crate) const LIB: &str = "qim_sdk_ffi";

/// What `bindings` produced.
pub(crate) struct Bindings {
    /// The generated Kotlin sources: one per uniffi namespace, the FFI
    /// crate's (`qim_sdk_ffi.kt`) and the SDK's own records and enums
    /// (`qim_sdk.kt`, derived under `qim-sdk`'s `ffi` feature).
    pub(crate) kotlin: Vec<PathBuf>,
    /// Directory holding the host's native library (for
    /// `-Djna.library.path`).
    pub(crate) native_dir: PathBuf,
}

/// The cargo target directory in use.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { root.join(d) })
        .unwrap_or_else(|| root.join("target"))
}

fn host_lib_name() -> String {
    if cfg!(target_os = "macos") {
        format!("lib{LIB}.dylib")
    } else if cfg!(windows) {
        format!("{LIB}.dll")
    } else {
        format!("lib{LIB}.so")
    }
}

/// Builds the library and the in-tree bindgen, generates Kotlin and Swift
/// into `out`, copies the native library next to them, and checks both
/// languages for completeness.
pub(crate) fn bindings(root: &Path, out: &Path, release: bool, quiet: bool) -> Result<Bindings> {
    let mut build = Command::new(cargo());
    build.current_dir(root).args([
        "build",
        "--quiet",
        "-p",
        "qim-sdk-ffi",
        "--features",
        "bindgen",
        "--lib",
        "--bin",
        "uniffi-bindgen",
    ]);
    if release {
        build.arg("--release");
    }
    run(&mut build)?;
    let profile = target_dir(root).join(if release { "release" } else { "debug" });
    let lib = profile.join(host_lib_name());
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    let sources = out.join("sources");
    run(Command::new(profile.join("uniffi-bindgen"))
        .args(["generate", "--library"])
        .arg(&lib)
        .args(["--language", "kotlin", "--language", "swift", "--no-format"])
        .arg("--out-dir")
        .arg(&sources))?;
    let native_dir = out.join("native");
    std::fs::create_dir_all(&native_dir)?;
    std::fs::copy(&lib, native_dir.join(host_lib_name()))
        .with_context(|| format!("copying {}", lib.display()))?;

    let kotlin = sources.join("uniffi").join(LIB).join(format!("{LIB}.kt"));
    let swift = sources.join(format!("{LIB}.swift"));
    let exports = ffi_sources(&root.join("sdk-ffi").join("src"))?
        .iter()
        .flat_map(|source| exports(source))
        .collect::<Vec<_>>();
    check_complete(&exports, &std::fs::read_to_string(&kotlin)?, Lang::Kotlin)?;
    check_complete(&exports, &std::fs::read_to_string(&swift)?, Lang::Swift)?;
    for header in [format!("{LIB}FFI.h"), format!("{LIB}FFI.modulemap")] {
        if !sources.join(&header).exists() {
            bail!("uniffi did not write {header}");
        }
    }
    if !quiet {
        println!(
            "bindings in {}:\n  Kotlin: {}\n  Swift:  {} (+ {LIB}FFI.h, {LIB}FFI.modulemap)\n  native library for this host: {}\n  checked: {} exported items present in both languages",
            out.display(),
            kotlin.display(),
            swift.display(),
            native_dir.join(host_lib_name()).display(),
            exports.len(),
        );
        println!("{}", cross_build_help());
    }
    let kotlin = namespace_sources(&sources.join("uniffi"))?;
    Ok(Bindings { kotlin, native_dir })
}

/// The documented commands for phone targets (not run here: no Android NDK
/// or Apple toolchain on this machine).
fn cross_build_help() -> &'static str {
    r#"
Android (needs the Android NDK and `cargo install cargo-ndk`):
  rustup target add aarch64-linux-android armv7-linux-androideabi x86_64-linux-android i686-linux-android
  cargo ndk -t arm64-v8a -t armeabi-v7a -t x86_64 -t x86 -o app/src/main/jniLibs build --release -p qim-sdk-ffi
  # copy sources/uniffi/qim_sdk_ffi/qim_sdk_ffi.kt and sources/uniffi/qim_sdk/qim_sdk.kt into the app;
  # depend on net.java.dev.jna:jna:5.14.0@aar
  # and org.jetbrains.kotlinx:kotlinx-coroutines-core

iOS / macOS (needs Xcode):
  rustup target add aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin
  cargo build --release -p qim-sdk-ffi --target aarch64-apple-ios
  cargo build --release -p qim-sdk-ffi --target aarch64-apple-ios-sim
  cargo build --release -p qim-sdk-ffi --target aarch64-apple-darwin
  mkdir -p headers && cp sources/qim_sdk_ffiFFI.h sources/qim_sdkFFI.h headers/
  cat sources/qim_sdk_ffiFFI.modulemap sources/qim_sdkFFI.modulemap > headers/module.modulemap
  xcodebuild -create-xcframework \
    -library target/aarch64-apple-ios/release/libqim_sdk_ffi.a -headers headers \
    -library target/aarch64-apple-ios-sim/release/libqim_sdk_ffi.a -headers headers \
    -library target/aarch64-apple-darwin/release/libqim_sdk_ffi.a -headers headers \
    -output QimSdkFFI.xcframework
  # add QimSdkFFI.xcframework, sources/qim_sdk_ffi.swift and sources/qim_sdk.swift to the Xcode project
  # or a Swift package"#
}

/// The Kotlin file of each namespace (`uniffi/<namespace>/<namespace>.kt`),
/// in name order.
fn namespace_sources(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let namespace = entry?.path();
        if let Some(name) = namespace.file_name().and_then(|n| n.to_str()) {
            let file = namespace.join(format!("{name}.kt"));
            if file.exists() {
                files.push(file);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The FFI crate's modules (`src/*.rs`, not the bindgen binary), in name
/// order.
fn ffi_sources(dir: &Path) -> Result<Vec<String>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .collect()
}

/// An item the Rust side exports, and how each language spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Export {
    /// An object (`class`).
    Object(String),
    /// A record (Kotlin `data class`, Swift `struct`).
    Record(String),
    /// An enum or error (Kotlin `enum class`/`sealed class`, Swift `enum`).
    Enum(String),
    /// A callback interface (Kotlin `interface`, Swift `protocol`).
    Callback(String),
    /// A method of an object or callback interface.
    Method(String),
}

#[derive(Clone, Copy)]
enum Lang {
    Kotlin,
    Swift,
}

fn lower_camel(snake: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn ident_after<'a>(line: &'a str, keyword: &str) -> Option<&'a str> {
    let rest = line.trim().split_once(keyword)?.1;
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    Some(&rest[..end]).filter(|s| !s.is_empty())
}

/// Reads the exported items from the FFI crate's source: types by their
/// uniffi derive, methods of `#[uniffi::export]` impls and traits.
pub(crate) fn exports(source: &str) -> Vec<Export> {
    let mut out = Vec::new();
    let mut pending_derive: Option<&str> = None;
    let mut in_export = false;
    let mut depth = 0i32;
    for line in source.lines() {
        let t = line.trim();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        if t.starts_with("#[derive(") {
            for kind in [
                "uniffi::Record",
                "uniffi::Enum",
                "uniffi::Error",
                "uniffi::Object",
            ] {
                if t.contains(kind) {
                    pending_derive = Some(kind);
                }
            }
        }
        if t.starts_with("#[uniffi::export") {
            in_export = true;
            depth = 0;
            continue;
        }
        if let Some(kind) = pending_derive {
            let name = ident_after(t, "pub struct ").or_else(|| ident_after(t, "pub enum "));
            if let Some(name) = name {
                out.push(match kind {
                    "uniffi::Record" => Export::Record(name.to_owned()),
                    "uniffi::Object" => Export::Object(name.to_owned()),
                    _ => Export::Enum(name.to_owned()),
                });
                pending_derive = None;
            }
        }
        if in_export {
            if let Some(name) = ident_after(t, "pub trait ") {
                out.push(Export::Callback(name.to_owned()));
            }
            let is_trait_fn = t.starts_with("fn ");
            let method = ident_after(t, "pub async fn ")
                .or_else(|| ident_after(t, "pub fn "))
                .or_else(|| is_trait_fn.then(|| ident_after(t, "fn ")).flatten());
            if let Some(name) = method.filter(|name| *name != "new") {
                out.push(Export::Method(lower_camel(name)));
            }
            depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
            if depth == 0 && t.ends_with('}') {
                in_export = false;
            }
        }
    }
    out
}

fn check_complete(exports: &[Export], generated: &str, lang: Lang) -> Result<()> {
    let mut missing = Vec::new();
    for export in exports {
        let found = match (export, lang) {
            (Export::Object(n), _) => generated.contains(&format!("class {n}")),
            (Export::Record(n), Lang::Kotlin) => generated.contains(&format!("data class {n}")),
            (Export::Record(n), Lang::Swift) => generated.contains(&format!("struct {n}")),
            (Export::Enum(n), Lang::Kotlin) => {
                generated.contains(&format!("enum class {n}"))
                    || generated.contains(&format!("sealed class {n}"))
                    || generated
                        .contains(&format!("sealed class {}", n.replace("Error", "Exception")))
            }
            (Export::Enum(n), Lang::Swift) => generated.contains(&format!("enum {n}")),
            (Export::Callback(n), Lang::Kotlin) => generated.contains(&format!("interface {n}")),
            (Export::Callback(n), Lang::Swift) => generated.contains(&format!("protocol {n}")),
            (Export::Method(n), Lang::Kotlin) => generated.contains(&format!("fun `{n}`(")),
            (Export::Method(n), Lang::Swift) => generated.contains(&format!("func {n}(")),
        };
        if !found {
            missing.push(format!("{export:?}"));
        }
    }
    let lang = match lang {
        Lang::Kotlin => "Kotlin",
        Lang::Swift => "Swift",
    };
    if exports.len() < 10 {
        bail!("found only {} exports in sdk-ffi/src", exports.len());
    }
    if !missing.is_empty() {
        bail!("generated {lang} lacks: {}", missing.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = r#"
#[derive(Debug, uniffi::Record)]
pub struct Receipt {
    pub seq: u64,
}
#[derive(uniffi::Error)]
pub enum QimError { Timeout }
#[uniffi::export(with_foreign)]
pub trait Listener: Send {
    fn on_message(&self, m: Receipt);
}
#[uniffi::export]
impl Client {
    #[uniffi::constructor]
    pub fn new() -> Arc<Self> { Arc::new(Client {}) }
    pub async fn send_text(&self) {}
}
pub fn not_exported() {}
"#;

    #[test]
    fn reads_exports_from_the_source() {
        assert_eq!(
            exports(SOURCE),
            vec![
                Export::Record("Receipt".into()),
                Export::Enum("QimError".into()),
                Export::Callback("Listener".into()),
                Export::Method("onMessage".into()),
                Export::Method("sendText".into()),
            ]
        );
    }

    #[test]
    fn missing_items_are_reported() {
        let e = exports(SOURCE);
        let swift = "struct Receipt enum QimError protocol Listener func onMessage(";
        let err = check_complete(&e, swift, Lang::Swift).expect_err("too few exports");
        assert!(err.to_string().contains("only"));
        let mut many = e.clone();
        for i in 0..10 {
            many.push(Export::Record(format!("R{i}")));
        }
        let err = check_complete(&many, swift, Lang::Swift).expect_err("missing");
        assert!(err.to_string().contains("sendText"), "{err}");
    }
}
