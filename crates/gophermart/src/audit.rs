//! `gophermart audit`: checks the ledger's invariants in the database and reports them, for
//! operators. Reads one snapshot and locks nothing the running service waits for, so it can
//! run at any time against a live database.
//!
//! Exit code 0 when every invariant holds, 1 when one is broken, 2 when the audit could not
//! be made (bad flags, no database).

use std::process::ExitCode;

use adapters_postgres::{Invariant, LedgerAudit, Violation};
use clap::{Parser, ValueEnum};
use rust_decimal::Decimal;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

/// Report format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// For people.
    Text,
    /// One JSON document.
    Json,
}

/// Checks the ledger in the database: every account's balance + withdrawn equals the accruals
/// of its processed orders, withdrawn equals the sum of its withdrawals, no balance is
/// negative, every unfinished order has exactly one accrual queue entry and no finished one
/// has any. Exits 0 when all hold, 1 when one does not, 2 when the audit cannot be made.
#[derive(Debug, Clone, Parser)]
#[command(name = "gophermart audit", bin_name = "gophermart audit", version)]
pub struct AuditArgs {
    /// PostgreSQL connection URI of the service's database.
    #[arg(
        short = 'd',
        long = "database-uri",
        env = "DATABASE_URI",
        hide_env_values = true
    )]
    pub database_uri: SecretString,

    /// Report format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
}

/// Whether `args` (as from the command line, program name first) ask for the audit.
#[must_use]
pub fn is_requested(args: &[std::ffi::OsString]) -> bool {
    args.get(1).is_some_and(|arg| arg == "audit")
}

/// Runs the audit and prints its report on stdout.
pub async fn run(args: AuditArgs) -> ExitCode {
    match LedgerAudit::run(args.database_uri.expose_secret()).await {
        Ok(audit) => {
            match args.format {
                ReportFormat::Text => print!("{}", text_report(&audit)),
                ReportFormat::Json => println!("{}", json_report(&audit)),
            }
            if audit.holds() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            match args.format {
                ReportFormat::Text => eprintln!("gophermart audit: {error}"),
                ReportFormat::Json => {
                    println!("{}", json!({"ok": false, "error": error.to_string()}))
                }
            }
            ExitCode::from(2)
        }
    }
}

/// The report for people.
#[must_use]
pub fn text_report(audit: &LedgerAudit) -> String {
    let mut out = String::new();
    out.push_str("Ledger audit (one REPEATABLE READ snapshot)\n");
    out.push_str(&format!(
        "  users {}, orders {} ({} not yet final), accrual queue entries {}, withdrawals {}\n",
        audit.users, audit.orders, audit.unfinished_orders, audit.queue_entries, audit.withdrawals
    ));
    out.push_str(&format!(
        "  points: balances {} + withdrawn {} = {}; processed orders accrued {}\n\n",
        audit.total_balance,
        audit.total_withdrawn,
        audit.total_balance + audit.total_withdrawn,
        audit.total_accrued
    ));
    for check in &audit.checks {
        let invariant = check.invariant;
        if check.holds() {
            out.push_str(&format!(
                "  ok    {}: {}\n",
                invariant.name(),
                invariant.description()
            ));
        } else {
            out.push_str(&format!(
                "  FAIL  {}: {} ({} violation{})\n",
                invariant.name(),
                invariant.description(),
                check.violations,
                if check.violations == 1 { "" } else { "s" }
            ));
            for violation in &check.examples {
                out.push_str(&format!("          {violation}\n"));
            }
            let unlisted = check.violations - check.examples.len() as i64;
            if unlisted > 0 {
                out.push_str(&format!("          … and {unlisted} more\n"));
            }
        }
    }
    let broken = audit.violated().count();
    if broken == 0 {
        out.push_str("\nEvery invariant holds.\n");
    } else {
        out.push_str(&format!(
            "\n{broken} of {} invariants broken.\n",
            Invariant::ALL.len()
        ));
    }
    out
}

fn number(value: Decimal) -> Value {
    // Exact: serde_json keeps the digits (its `arbitrary_precision` feature).
    value
        .to_string()
        .parse::<serde_json::Number>()
        .map_or_else(|_| Value::String(value.to_string()), Value::Number)
}

fn violation_json(violation: &Violation) -> Value {
    let mut value = match violation {
        Violation::Unbalanced {
            user_id,
            balance,
            withdrawn,
            accrued,
        } => json!({
            "user_id": user_id,
            "balance": number(*balance),
            "withdrawn": number(*withdrawn),
            "accrued": number(*accrued),
        }),
        Violation::WithdrawnMismatch {
            user_id,
            withdrawn,
            withdrawals,
        } => json!({
            "user_id": user_id,
            "withdrawn": number(*withdrawn),
            "withdrawals": number(*withdrawals),
        }),
        Violation::NegativeBalance { user_id, balance } => json!({
            "user_id": user_id,
            "balance": number(*balance),
        }),
        Violation::UnfinishedOrderQueue {
            number,
            status,
            entries,
        }
        | Violation::FinishedOrderQueued {
            number,
            status,
            entries,
        } => json!({
            "order": number,
            "status": status,
            "queue_entries": entries,
        }),
    };
    value["message"] = Value::String(violation.to_string());
    value
}

/// The report for machines.
#[must_use]
pub fn json_report(audit: &LedgerAudit) -> Value {
    json!({
        "ok": audit.holds(),
        "users": audit.users,
        "orders": audit.orders,
        "unfinished_orders": audit.unfinished_orders,
        "queue_entries": audit.queue_entries,
        "withdrawals": audit.withdrawals,
        "total_balance": number(audit.total_balance),
        "total_withdrawn": number(audit.total_withdrawn),
        "total_accrued": number(audit.total_accrued),
        "invariants": audit.checks.iter().map(|check| json!({
            "name": check.invariant.name(),
            "description": check.invariant.description(),
            "holds": check.holds(),
            "violations": check.violations,
            "examples": check.examples.iter().map(violation_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_is_asked_for_by_its_first_argument_only() {
        let args = |list: &[&str]| list.iter().map(Into::into).collect::<Vec<_>>();

        assert!(is_requested(&args(&["gophermart", "audit"])));
        assert!(is_requested(&args(&[
            "gophermart",
            "audit",
            "--format",
            "json"
        ])));
        assert!(!is_requested(&args(&["gophermart"])));
        assert!(!is_requested(&args(&["gophermart", "-a", "audit"])));
    }

    #[test]
    fn flags_and_environment_name_the_database() {
        let parsed = AuditArgs::try_parse_from(["gophermart audit", "-d", "postgres://x"])
            .expect("valid flags");

        assert_eq!(parsed.database_uri.expose_secret(), "postgres://x");
        assert_eq!(parsed.format, ReportFormat::Text);
        assert!(
            AuditArgs::try_parse_from(["gophermart audit", "-d", "x", "--format", "xml"]).is_err()
        );
    }

    #[test]
    fn decimals_stay_exact_in_json() {
        assert_eq!(
            number(Decimal::new(1_000_000_000_000_000_001, 2)).to_string(),
            "10000000000000000.01"
        );
    }
}
