//! The quarantine beside the flaky tests, from a real history store: a person signed
//! in with a token sees the entries that apply to their suites (every suite's, their
//! token's, their repositories'), each with its reason and when it was added, and none
//! of another token's.

use fantoccini::Locator;

use isotest_history::History;
use isotest_history::quarantine::Scope;
use isotest_history::testing::ScratchSchema;

use crate::browser::Browser;
use crate::helpers::TestEnv;

#[tokio::test]
async fn a_person_sees_the_quarantine_of_their_suites_beside_the_flaky_tests() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let db = ScratchSchema::create().await.expect("postgres");
    let history = History::open(&db.url)
        .await
        .expect("the history store opens");
    let url = db.url.clone();
    let env = TestEnv::start_with(|c| {
        c.open = false;
        c.history_url = Some(url);
    })
    .await;
    let mine = env.add_token("ci-main").await;
    let _theirs = env.add_token("ci-other-team").await;
    let hour_ago = isotest_protocol::now_ms() - 3_600_000;
    let entries = [
        (
            Scope::Token("ci-main".into()),
            "tests/test_pay.py::test_refund",
            "fails one run in three",
        ),
        (
            Scope::All,
            "tests/test_db.py::test_pool",
            "timing-dependent",
        ),
        (
            Scope::Token("ci-other-team".into()),
            "tests/their_secret_test",
            "theirs",
        ),
        (
            Scope::Repository("other/repo".into()),
            "tests/not_my_repo",
            "elsewhere",
        ),
    ];
    for (scope, test, reason) in &entries {
        assert!(
            history
                .quarantine_add(scope, test, reason, hour_ago)
                .await
                .expect("add")
        );
    }
    let b = &browser;
    b.client.goto(&env.url("/ui")).await.expect("open /ui");
    b.wait_url(|u| u.ends_with("/ui/login")).await;
    b.client
        .find(Locator::Id("token"))
        .await
        .expect("a token field")
        .send_keys(&mine)
        .await
        .expect("type");
    b.client
        .find(Locator::Id("sign-in"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    b.wait_url(|u| u.contains("/ui") && !u.ends_with("/ui/login"))
        .await;

    // The link shows once the server answers for the history store.
    b.wait_text("#nav-flaky", |t| t.contains("quarantined"))
        .await;
    b.client
        .find(Locator::Id("nav-flaky"))
        .await
        .expect("the link")
        .click()
        .await
        .expect("click");
    let page = b
        .wait_text("main", |t| t.contains("No test is flaky."))
        .await;
    // The style sheet shows headings in capitals.
    assert!(page.to_lowercase().contains("quarantined tests"), "{page}");
    let quarantine = b
        .wait_text("#quarantine", |t| t.contains("test_refund"))
        .await;
    for seen in [
        "tests/test_pay.py::test_refund",
        "token ci-main",
        "fails one run in three",
        "tests/test_db.py::test_pool",
        "every suite",
        "timing-dependent",
        "1 h ago",
    ] {
        assert!(
            quarantine.contains(seen),
            "`{seen}` missing from: {quarantine}"
        );
    }
    for unseen in ["their_secret_test", "ci-other-team", "not_my_repo"] {
        assert!(
            !quarantine.contains(unseen),
            "`{unseen}` shown: {quarantine}"
        );
    }
    b.screenshot("dashboard-quarantine").await;
    browser.close().await;
    env.finish().await;
    history.close().await;
    db.drop().await.expect("schema dropped");
}
