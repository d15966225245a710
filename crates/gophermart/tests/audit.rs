//! `gophermart audit`, the built binary, against a database after the accrual flow: it passes
//! while the ledger is sound, and names each invariant a deliberate corruption breaks.

mod support;

use std::{
    net::SocketAddr,
    process::{Command, Output},
    time::Duration,
};

use adapters_postgres::testing::TestDatabase;
use serde_json::Value;

use support::{
    free_port, numbers, points, register, register_purchases, start_accrual, upload,
    wait_all_final, Instance,
};

fn audit(db: &TestDatabase, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gophermart"))
        .arg("audit")
        .args(extra)
        .env("DATABASE_URI", db.url())
        .output()
        .expect("gophermart audit runs")
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn invariant<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["invariants"]
        .as_array()
        .expect("invariants")
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_passes_a_sound_ledger_and_names_what_a_corruption_breaks() {
    let db = TestDatabase::create().await;
    let client = reqwest::Client::new();
    let accrual_address: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let accrual_url = format!("http://{accrual_address}");
    let accrual = start_accrual(accrual_address, |_| {}).await;
    let credited = numbers(3, 7_770_000);
    register_purchases(&client, &accrual_url, &credited, &points).await;
    let mut instance = Instance::start(&db, &accrual_url, &[]);
    instance.wait_ready(&client).await;
    let token = register(&client, &instance.base, "audited").await;
    for number in &credited {
        assert_eq!(upload(&client, &instance.base, &token, number).await, 202);
    }
    wait_all_final(
        &client,
        &instance.base,
        &token,
        credited.len(),
        Duration::from_secs(60),
    )
    .await;
    instance.terminate();
    drop(accrual);

    // Sound after the accrual flow.
    let healthy = audit(&db, &[]);
    assert_eq!(healthy.status.code(), Some(0), "{}", text(&healthy));
    assert!(
        text(&healthy).contains("Every invariant holds."),
        "{}",
        text(&healthy)
    );
    let healthy_json = audit(&db, &["--format", "json"]);
    assert_eq!(healthy_json.status.code(), Some(0));
    let report: Value = serde_json::from_slice(&healthy_json.stdout).expect("JSON report");
    assert_eq!(report["ok"], true);
    assert_eq!(report["orders"], 3);
    assert_eq!(report["queue_entries"], 0);
    assert_eq!(
        report["total_accrued"].to_string(),
        support::total(3).to_string()
    );

    // A credited order that no balance reflects, and a queue entry for a finished order.
    let forged = domain::with_check_digit("8880001");
    db.execute(&format!(
        "INSERT INTO orders (number, user_id, status, accrual, uploaded_at)
         SELECT '{forged}', id, 'PROCESSED', 55.50, now() FROM users WHERE login = 'audited';
         INSERT INTO accrual_queue (order_number) VALUES ('{}');",
        credited[0]
    ))
    .await;

    let broken = audit(&db, &[]);
    let report_text = text(&broken);
    assert_eq!(broken.status.code(), Some(1), "{report_text}");
    assert!(
        report_text.contains("FAIL  balance_matches_accruals"),
        "{report_text}"
    );
    assert!(
        report_text.contains("FAIL  finished_order_not_queued"),
        "{report_text}"
    );
    assert!(
        report_text.contains(&format!(
            "order {} (PROCESSED) has 1 queue entry",
            credited[0]
        )),
        "{report_text}"
    );
    assert!(
        report_text.contains("ok    withdrawn_matches_withdrawals"),
        "{report_text}"
    );
    assert!(
        report_text.contains("2 of 5 invariants broken."),
        "{report_text}"
    );

    let broken_json = audit(&db, &["--format", "json"]);
    assert_eq!(broken_json.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&broken_json.stdout).expect("JSON report");
    assert_eq!(report["ok"], false);
    let unbalanced = invariant(&report, "balance_matches_accruals");
    assert_eq!(unbalanced["holds"], false);
    assert_eq!(unbalanced["violations"], 1);
    assert_eq!(
        unbalanced["examples"][0]["accrued"].to_string(),
        (support::total(3) + rust_decimal::Decimal::new(5550, 2)).to_string()
    );
    let queued = invariant(&report, "finished_order_not_queued");
    assert_eq!(queued["holds"], false);
    assert_eq!(queued["examples"][0]["order"], credited[0].as_str());
    assert_eq!(invariant(&report, "no_negative_balance")["holds"], true);
    assert_eq!(
        invariant(&report, "unfinished_order_queued_once")["holds"],
        true
    );
}

#[test]
fn the_audit_exits_2_when_it_cannot_read_the_database() {
    let output = Command::new(env!("CARGO_BIN_EXE_gophermart"))
        .args(["audit", "-d", "postgres://postgres@127.0.0.1:9/none"])
        .output()
        .expect("gophermart audit runs");

    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot connect"),
        "{output:?}"
    );
}
