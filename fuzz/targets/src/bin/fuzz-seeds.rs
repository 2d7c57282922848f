//! `fuzz-seeds DIR`: writes each fuzz target's seeds into `DIR/<target>/`
//! (named by their BLAKE3, as libFuzzer names corpus files), for
//! `cargo xtask fuzz` to start an empty corpus with.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fuzz-seeds DIR");
        std::process::exit(2);
    };
    for (name, data) in coffer_fuzz_targets::seeds::all() {
        let target = dir.join(name);
        std::fs::create_dir_all(&target)?;
        std::fs::write(target.join(blake3::hash(&data).to_hex().as_str()), &data)?;
    }
    Ok(())
}
