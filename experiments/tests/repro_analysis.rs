//! The ablation sections of the reproduction report on the synthetic fallback at the smoke
//! profile: each produces a non-empty table, its figure files, an HDF5 file and numbers that
//! obey the invariants of the method (recall in [0, 1] and exactly 1 without Key-Experts, dense K
//! selects all M rows, the union grows with the batch and stays ≤ M, MEFT moves fewer bytes than
//! full offload when the union is below M).

use std::path::Path;

use experiments::repro::runs::Runner;
use experiments::repro::{Context, Profile, Section, ablations, traffic};

fn context(dir: &Path) -> Context {
    Context { seed: 7, ..Context::synthetic_in(dir, Profile::Smoke, "hermetic test") }
}

/// The shared checks on a section: a markdown table, figure and HDF5 files that exist.
fn check_section(ctx: &Context, s: &Section) {
    assert!(s.markdown.contains("| ---"), "no markdown table in:\n{}", s.markdown);
    assert!(s.markdown.contains("SYNTHETIC FALLBACK"), "the fallback must be stated");
    assert!(!s.figures.is_empty());
    for f in &s.figures {
        let path = ctx.paper_dir.join(f);
        let len = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).len();
        assert!(len > 1000, "{} is only {len} bytes", path.display());
    }
    let h5 = ctx.results_dir().join(format!("{}.h5", s.id.name()));
    assert!(h5.is_file(), "{} missing", h5.display());
}

fn runner(ctx: &Context) -> Runner {
    Runner::new(&ctx.runs_dir, 2, 8)
}

#[test]
fn exact_retrieval_without_key_experts_has_recall_one() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let s = ablations::router::run_key_experts(&ctx, &runner(&ctx)).unwrap();
    check_section(&ctx, &s);
    let points = s.results["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    for p in points {
        let recall = p["trained"]["recall"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&recall), "{p}");
        if p["experts"].as_u64() == Some(1) {
            assert_eq!(recall, 1.0, "one expert holding every key is exact retrieval: {p}");
            assert_eq!(p["initial"]["recall"].as_f64(), Some(1.0));
        }
    }
}

#[test]
fn experts_section_trains_every_expert_count_and_measures_recall() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let s = ablations::router::run_experts(&ctx, &runner(&ctx)).unwrap();
    check_section(&ctx, &s);
    let points = s.results["points"].as_array().unwrap();
    assert!(points.len() >= 2);
    for p in points {
        for key in ["trained", "initial"] {
            let r = p[key]["recall"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&r), "{key}: {p}");
        }
        assert_eq!(p["top_p"].as_u64().unwrap(), (p["experts"].as_u64().unwrap() / 4).max(1));
    }
    assert!(s.results["runs"].as_array().unwrap().iter().all(|r| r["steps"].as_u64().unwrap() > 0), "every point is trained");
}

#[test]
fn dense_k_selects_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let s = ablations::top_k::run(&ctx, &runner(&ctx)).unwrap();
    check_section(&ctx, &s);
    let m = s.results["neurons"].as_f64().unwrap();
    let runs = s.results["runs"].as_array().unwrap();
    let dense = runs.iter().find(|r| r["label"].as_str().unwrap().starts_with("dense")).expect("a dense point");
    assert_eq!(dense["meft"]["mean_union_rows"].as_f64(), Some(m), "{dense}");
    assert!(runs.iter().all(|r| r["meft"]["dropped_fraction"].as_f64() == Some(0.0)), "the working set holds all M rows");
}

#[test]
fn size_section_marks_the_budget_and_grows_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let s = ablations::size::run(&ctx, &runner(&ctx)).unwrap();
    check_section(&ctx, &s);
    let runs = s.results["runs"].as_array().unwrap();
    let budget = s.results["base"]["budget"]["bytes"].as_u64().unwrap();
    let params = |prefix: &str| -> Vec<u64> {
        runs.iter().filter(|r| r["label"].as_str().unwrap().starts_with(prefix)).map(|r| r["trainable_params"].as_u64().unwrap()).collect()
    };
    let pa = params("PA ");
    assert!(pa.len() >= 2 && pa.windows(2).all(|w| w[0] < w[1]), "{pa:?}");
    for r in runs.iter().filter(|r| r["label"].as_str().unwrap().starts_with("MEFT")) {
        assert!(r["device_total_bytes"].as_u64().unwrap() <= budget, "MEFT must fit the budget: {r}");
    }
    assert!(s.markdown.contains("✔"));
}

#[test]
fn traffic_after_training_grows_with_the_batch_and_moves_less_than_full_offload() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let s = traffic::run(&ctx, &runner(&ctx)).unwrap();
    check_section(&ctx, &s);
    let trained = &s.results["trained"];
    let fractions: Vec<f64> = trained["trained"].as_array().unwrap().iter().map(|p| p["fraction"].as_f64().unwrap()).collect();
    assert!(fractions.iter().all(|f| *f > 0.0 && *f <= 1.0), "{fractions:?}");
    assert!(fractions.windows(2).all(|w| w[0] <= w[1] + 1e-12), "a bigger batch selects at least as many rows: {fractions:?}");
    let t = &s.results["measured"];
    let f = |k: &str| t[k].as_f64().unwrap_or_else(|| panic!("{k} missing in {t}"));
    let (moved, full) = (f("h2d_bytes") + f("d2h_bytes"), f("full_offload_bytes"));
    assert!(moved > 0.0 && full > 0.0);
    assert_eq!(f("h2d_bytes"), f("d2h_bytes"), "every row sent down returns a gradient");
    if f("union_fraction") < 1.0 {
        assert!(full / moved > 1.0, "a union below M must move less than full offload");
    }
    assert!(s.markdown.contains("modelled") && s.markdown.contains("xtrapolated"));
}
