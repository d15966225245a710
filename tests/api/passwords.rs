//! Passwords in any script: the limit is the document's `maxLength`, in characters; every
//! character counts; and hashes stored before the keyed pre-hash still sign in.

use api_tests::spawn_app;
use application::ports::{security::PasswordHash, users::UserRepository};
use domain::{Login, MAX_PASSWORD_CHARS};

use crate::support::assert_problem;

/// One character of each width in UTF-8: one, two, three and four bytes.
const SCRIPTS: [(&str, char); 4] = [
    ("ASCII", 'a'),
    ("Cyrillic", 'ж'),
    ("CJK", '密'),
    ("emoji", '🦫'),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_of_the_documented_length_signs_in_in_every_script() {
    let app = spawn_app().await;
    let documented: serde_json::Value = app
        .client
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("the document");
    let max_length = documented["components"]["schemas"]["CredentialsBody"]["properties"]
        ["password"]["maxLength"]
        .as_u64()
        .expect("a maxLength");
    assert_eq!(max_length, MAX_PASSWORD_CHARS as u64);

    for (script, c) in SCRIPTS {
        for chars in [72, MAX_PASSWORD_CHARS] {
            let login = format!("{script}-{chars}");
            let password: String = std::iter::repeat_n(c, chars).collect();

            let registered = app.register(&login, &password).await;
            assert_eq!(registered.status(), 200, "{script} × {chars}");
            let signed_in = app.login(&login, &password).await;
            assert_eq!(signed_in.status(), 200, "{script} × {chars}");
            // bcrypt alone reads 72 bytes; the last character must still count.
            let mut other = password.clone();
            other.pop();
            other.push('x');
            let refused = app.login(&login, &other).await;
            assert_problem(refused, 401).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_beyond_the_limit_is_refused_with_400_in_every_script() {
    let app = spawn_app().await;

    for (script, c) in SCRIPTS {
        let login = format!("{script}-long");
        let password: String = std::iter::repeat_n(c, MAX_PASSWORD_CHARS + 1).collect();

        let registered = app.register(&login, &password).await;
        let problem = assert_problem(registered, 400).await;
        assert_eq!(
            problem["detail"],
            format!("the password is longer than {MAX_PASSWORD_CHARS} characters"),
            "{script}"
        );
        let signed_in = app.login(&login, &password).await;
        assert_problem(signed_in, 400).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_stored_before_the_pre_hash_still_signs_in_and_is_kept() {
    let app = spawn_app().await;
    let store = app.db.store();
    let login = Login::parse("veteran").expect("a login");
    // What the service stored before: bare bcrypt of a password of at most 72 bytes.
    let password = "старый пароль";
    let old = PasswordHash(bcrypt::hash(password, 4).expect("hashed"));
    store.create(&login, &old).await.expect("created");

    let signed_in = app.login("veteran", password).await;
    let wrong = app.login("veteran", "новый пароль").await;

    assert_eq!(signed_in.status(), 200);
    assert_problem(wrong, 401).await;
    let stored = store
        .find_by_login(&login)
        .await
        .expect("read")
        .expect("the user");
    assert!(
        stored.password_hash == old,
        "the old hash is kept as it was"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_hashes_carry_the_version_marker() {
    let app = spawn_app().await;
    assert_eq!(app.register("newcomer", "пароль").await.status(), 200);

    let stored = app
        .db
        .store()
        .find_by_login(&Login::parse("newcomer").expect("a login"))
        .await
        .expect("read")
        .expect("the user");

    assert!(stored.password_hash.0.starts_with("gm2:$2b$04$"));
}
