//! Experiments 2–4 of the reproduction report on the synthetic fallback at the smoke profile:
//! each produces a non-empty table, its figure files, an HDF5 file and numbers that obey the
//! invariants of the method (recall in [0, 1] and exactly 1 when the probes cover every expert,
//! union ≤ min(M, T·K), MEFT moves fewer bytes than full offload when the union is below M).

use std::path::Path;

use experiments::repro::{Context, Profile, Section, capture, experts, traffic, union};

fn context(dir: &Path) -> Context {
    Context { seed: 7, ..Context::synthetic_in(dir, Profile::Smoke, "hermetic test") }
}

/// The shared checks on a section: a markdown table, figure and HDF5 files that exist.
fn check_section(ctx: &Context, s: &Section) {
    assert!(
        s.markdown.contains("| ---"),
        "no markdown table in:\n{}",
        s.markdown
    );
    assert!(
        s.markdown.contains("SYNTHETIC FALLBACK"),
        "the fallback must be stated"
    );
    assert!(!s.figures.is_empty());
    for f in &s.figures {
        let path = ctx.paper_dir.join(f);
        let len = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .len();
        assert!(len > 1000, "{} is only {len} bytes", path.display());
    }
    let h5 = s.results["h5"]
        .as_str()
        .expect("results name the HDF5 file");
    assert!(ctx.paper_dir.join(h5).is_file(), "{h5} missing");
}

fn numbers(v: &serde_json::Value, key: &str) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p[key].as_f64().unwrap())
        .collect()
}

#[test]
fn experts_section_has_sane_recall() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let s = experts::run(&ctx).unwrap();
    check_section(&ctx, &s);
    let points = &s.results["points"];
    for key in ["recall_plain", "recall_gated", "candidate_fraction"] {
        for r in numbers(points, key) {
            assert!((0.0..=1.0).contains(&r), "{key} = {r}");
        }
    }
    for p in points.as_array().unwrap() {
        if p["candidate_fraction"].as_f64() == Some(1.0) {
            assert_eq!(
                p["recall_plain"].as_f64(),
                Some(1.0),
                "probing every expert is the dense top-K: {p}"
            );
        }
    }
}

#[test]
fn probing_every_expert_recovers_the_dense_top_k() {
    let dir = tempfile::tempdir().unwrap();
    let c = capture::capture(&context(dir.path()), 6).unwrap();
    let (points, _) = experts::sweep(&c, 64, 8, &[4, 16], &[1, 4, 16], 1).unwrap();
    for p in &points {
        if p.top_p == p.experts {
            assert_eq!(p.recall_plain, 1.0, "{p:?}");
        }
        if p.top_p < p.experts {
            assert!(p.candidate_fraction < 1.0, "{p:?}");
        }
    }
    let one = points
        .iter()
        .find(|p| p.experts == 16 && p.top_p == 1)
        .unwrap();
    let all = points
        .iter()
        .find(|p| p.experts == 16 && p.top_p == 16)
        .unwrap();
    assert!(one.recall_plain <= all.recall_plain);
}

#[test]
fn union_section_is_bounded_by_m_and_t_times_k() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let s = union::run(&ctx).unwrap();
    check_section(&ctx, &s);
    let m = s.results["config"]["neurons"].as_f64().unwrap();
    for p in s.results["points"].as_array().unwrap() {
        let (u, bound) = (p["union"].as_f64().unwrap(), p["bound"].as_f64().unwrap());
        assert!(u >= 1.0 && u <= bound && bound <= m, "{p}");
        assert!((p["union_fraction"].as_f64().unwrap() - u / m).abs() < 1e-12);
    }
}

#[test]
fn a_single_token_selects_exactly_k_rows() {
    let dir = tempfile::tempdir().unwrap();
    let c = capture::capture(&context(dir.path()), 4).unwrap();
    let p = union::union_at(&c, 256, 8, 1, 4, 3).unwrap();
    assert!(p.union <= p.tokens * 8.0 && p.union >= 8.0, "{p:?}");
    let wide = union::union_at(&c, 256, 8, 4, 1, 3).unwrap();
    assert!(
        wide.union >= p.union,
        "a batch of 4 sequences selects at least what one does"
    );
}

#[test]
fn traffic_section_moves_less_than_full_offload() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let s = traffic::run(&ctx).unwrap();
    check_section(&ctx, &s);
    let t = &s.results["measured"];
    let f = |k: &str| {
        t[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing in {t}"))
    };
    let (moved, full) = (f("h2d_bytes") + f("d2h_bytes"), f("full_offload_bytes"));
    assert!(moved > 0.0 && full > 0.0);
    assert_eq!(
        f("h2d_bytes"),
        f("d2h_bytes"),
        "every row sent down returns a gradient"
    );
    let fraction = f("union_fraction");
    assert!(fraction > 0.0 && fraction <= 1.0);
    let ratio = s.results["ratio"].as_f64().unwrap();
    assert!((ratio - full / moved).abs() < 1e-9);
    if fraction < 1.0 {
        assert!(
            ratio > 1.0,
            "a union below M must move less than full offload: {ratio}"
        );
    }
    assert!(f("link_s") > 0.0 && f("meft_step_s") > 0.0 && f("dense_step_s") > 0.0);
    assert!(s.markdown.contains("modelled") && s.markdown.contains("extrapolated"));
}
