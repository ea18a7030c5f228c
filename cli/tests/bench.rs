//! `lazarus bench --quick`: the whole harness once, at a tiny size (the run
//! CI makes so that the harness cannot rot). Checks the results file against
//! the schema of docs/BENCH.md, that every workload and strategy appears
//! (CRIU skipped with its reason on this kernel, or measured), and that the
//! markdown table and the SVG plots exist. Never asserts on durations.
//!
//! Needs root (userfaultfd, ptrace, process restore) and the fixtures built
//! (`cargo build -p fixtures`).

mod common;

use serde_json::Value;

use common::ok;

const WORKLOADS: [&str; 3] = ["memhog", "kvserver", "memfile"];
const STRATEGIES: [&str; 7] = [
    "eager",
    "lazy",
    "lazy-prefetch",
    "lazy-working-set",
    "kernel-mmap",
    "uffd-baseline",
    "criu",
];

/// A `{median, min, max, vs_reference}` figure, or null.
fn check_figure(v: &Value, what: &str) {
    if v.is_null() {
        return;
    }
    let (med, min, max) = (
        v["median"]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: median in {v}")),
        v["min"]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: min in {v}")),
        v["max"]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: max in {v}")),
    );
    assert!(min <= med && med <= max, "{what}: {v}");
    assert!(
        v.get("vs_reference").is_some(),
        "{what}: no vs_reference in {v}"
    );
}

#[test]
fn quick_run_writes_every_result() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stdout = ok(&[
        &"bench",
        &"--quick",
        &"--out",
        &out,
        &"--work-dir",
        &dir.path(),
    ]);
    assert!(stdout.contains("| strategy |"), "{stdout}");

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["schema_version"], 1);
    for key in ["kernel", "cpu_model"] {
        assert!(
            json["machine"][key].as_str().is_some_and(|s| !s.is_empty()),
            "machine.{key}"
        );
    }
    assert!(json["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(json["machine"]["memory_bytes"].as_u64().unwrap() > 0);
    assert_eq!(json["config"]["quick"], true);
    assert_eq!(json["config"]["repeat"], 1);
    assert_eq!(json["config"]["reference"], "lazy-prefetch");

    let workloads = json["workloads"].as_array().unwrap();
    let names: Vec<&str> = workloads
        .iter()
        .map(|w| w["workload"].as_str().unwrap())
        .collect();
    assert_eq!(names, WORKLOADS);
    for w in workloads {
        let wn = w["workload"].as_str().unwrap();
        assert!(
            w["capture"]["image_bytes"].as_u64().unwrap() > 0,
            "{wn}: image size"
        );
        assert!(
            w["capture"]["time_ms"].as_f64().is_some(),
            "{wn}: capture time"
        );
        let results = w["results"].as_array().unwrap();
        let strategies: Vec<&str> = results
            .iter()
            .map(|r| r["strategy"].as_str().unwrap())
            .collect();
        assert_eq!(strategies, STRATEGIES, "{wn}");
        for r in results {
            let what = format!("{wn} / {}", r["strategy"]);
            assert_eq!(r["cache"], "warm", "{what}");
            if r["strategy"] == "criu" && r["status"] == "skipped" {
                let reason = r["reason"].as_str().unwrap_or("");
                assert!(!reason.is_empty(), "{what}: skipped without a reason");
                continue;
            }
            assert_eq!(r["status"], "ok", "{what}: {r}");
            assert!(r["reason"].is_null(), "{what}");
            assert!(
                ["process restore", "in-process replay"].contains(&r["method"].as_str().unwrap()),
                "{what}"
            );
            for fig in ["running_ms", "first_answer_ms", "answers_ms", "all_in_ms"] {
                check_figure(&r[fig], &format!("{what}: {fig}"));
            }
            assert!(!r["running_ms"].is_null(), "{what}: running_ms");
            let runs = r["runs"].as_array().unwrap();
            assert_eq!(runs.len(), 1, "{what}: one run in --quick");
            let run = &runs[0];
            assert!(run["faults"].as_u64().is_some(), "{what}: faults");
            assert!(run["bytes_copied"].as_u64().is_some(), "{what}: bytes");
            for lat in ["fault_latency", "answer_latency", "touch_latency"] {
                let l = &run[lat];
                if !l.is_null() {
                    assert!(l["kind"].as_str().is_some(), "{what}: {lat}.kind");
                    assert!(
                        !l["cdf"].as_array().unwrap().is_empty(),
                        "{what}: {lat}.cdf"
                    );
                }
            }
            assert!(run["rss"].as_array().is_some(), "{what}: rss");
        }
        // kvserver's Lazarus strategies answered, checked against the model.
        if wn == "kvserver" {
            for r in results
                .iter()
                .filter(|r| r["method"] == "process restore" && r["status"] == "ok")
            {
                assert!(
                    !r["first_answer_ms"].is_null(),
                    "kvserver / {}",
                    r["strategy"]
                );
                assert!(
                    !r["runs"][0]["answer_latency"].is_null(),
                    "kvserver / {}",
                    r["strategy"]
                );
            }
        }
    }

    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    for w in WORKLOADS {
        assert!(md.contains(&format!("## {w}")), "results.md lacks {w}");
    }
    for s in STRATEGIES {
        assert!(md.contains(&format!("| {s} |")), "results.md lacks {s}");
    }
    let mut svgs = vec!["answers-kvserver.svg".to_owned()];
    for w in WORKLOADS {
        svgs.push(format!("latency-{w}.svg"));
        svgs.push(format!("rss-{w}.svg"));
    }
    for svg in svgs {
        let text = std::fs::read_to_string(out.join(&svg)).unwrap_or_else(|e| panic!("{svg}: {e}"));
        assert!(text.contains("<svg"), "{svg} is not an SVG");
    }
    // The temporary images and raw files are gone.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "out")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn bad_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["bench", "--workload", "nope"],
        vec!["bench", "--strategies", "eager,nope"],
        vec!["bench", "--repeat", "0"],
        vec!["bench", "--mib", "0"],
        vec!["bench", "--reference", "nope"],
    ] {
        let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = args.iter().map(|a| a as _).collect();
        let out_dir = dir.path().join("o");
        all.push(&"--out");
        all.push(&out_dir);
        let out = common::lazarus(&all);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(
            !String::from_utf8_lossy(&out.stderr).is_empty(),
            "{args:?}: no message"
        );
    }
}
