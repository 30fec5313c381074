//! Pillion's benchmarks. The micro-benches live in `benches/hot_path.rs`
//! (`cargo bench -p pillion-benches`).
