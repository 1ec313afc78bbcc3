//! The embedded default's whole API, fuzzed from its own OpenAPI document by schemathesis
//! (tests/requirements.txt; required in CI): every operation, with a valid key, answers no
//! server error, and every response matches the document (status, content type, schema).

use std::process::Command;

use crate::harness::{API_KEY, Host, embedded_default};

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import schemathesis"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI requires schemathesis (pip install -r tests/requirements.txt)"
        );
        eprintln!("skipping schemathesis: pip install -r tests/requirements.txt");
        return;
    }
    // Throttling of refused credentials is off: schemathesis tries requests without them, and
    // would soon see nothing but 429.
    let host = Host::start(&embedded_default("[auth]\nmax_failures_per_minute = 0\n"));
    let out = Command::new(&python)
        .args([
            "-c",
            "import sys\nfrom schemathesis.cli import schemathesis\nsys.argv[0] = 'schemathesis'\nsys.exit(schemathesis())",
            "run",
        ])
        .arg(host.url("/openapi.json"))
        // Both ways of presenting a key, so schemathesis does not fill `X-API-Key` (which the
        // host reads first) with a made-up value.
        .args([
            "--header",
            &format!("Authorization: Bearer {API_KEY}"),
            "--header",
            &format!("X-API-Key: {API_KEY}"),
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
            "--max-examples",
            "25",
            "--request-timeout",
            "120",
            "--no-color",
        ])
        .env("NO_COLOR", "1")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| {
            l.contains("generated")
                || l.contains("failed")
                || l.contains("Seed")
                || l.contains('❌')
        })
        .collect();
    assert!(
        out.status.success(),
        "schemathesis found problems ({}):\n{}",
        out.status,
        summary.join("\n")
    );
    assert!(report.contains("passed"), "{report}");
    assert!(host.alive());
}
