//! The uniffi bindings generator, built from the workspace so its version
//! always matches the library's (`cargo xtask bindings` runs it).

fn main() {
    uniffi::uniffi_bindgen_main()
}
