//! `GET /v1/suites`: a token lists its own suites, newest first, a page at a time; an
//! admin token lists every token's; bad paging is a JSON 400.

use isotest_protocol::live::SuitePage;

use crate::helpers::{TestEnv, error_of, manifest};

async fn page(env: &TestEnv, token: &str, query: &str) -> SuitePage {
    let response = env
        .client
        .get(env.url(&format!("/v1/suites{query}")))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /v1/suites");
    assert_eq!(response.status().as_u16(), 200, "GET /v1/suites{query}");
    response.json().await.expect("a SuitePage")
}

fn ids(page: &SuitePage) -> Vec<&str> {
    page.suites.iter().map(|s| s.id.as_str()).collect()
}

#[tokio::test]
async fn a_token_pages_through_its_own_suites_and_an_admin_through_all() {
    let env = TestEnv::start_with(|c| c.open = false).await;
    let mine = env.add_token("team-a").await;
    let theirs = env.add_token("team-b").await;
    let admin = env.add_token_with("ops", true).await;
    let mut my_suites = Vec::new();
    for _ in 0..3 {
        my_suites.push(env.submit_as(Some(&mine), &manifest(&["a", "b"])).await);
    }
    let their_suite = env.submit_as(Some(&theirs), &manifest(&["c"])).await;
    let newest_first: Vec<&str> = my_suites.iter().rev().map(String::as_str).collect();

    // Two pages of two: every suite once, newest first, and the last page says so.
    let first = page(&env, &mine, "?limit=2").await;
    assert_eq!(ids(&first), newest_first[..2]);
    let next = first.next.clone().expect("a next page");
    assert_eq!(next, newest_first[1]);
    assert_eq!((first.suites[0].total, first.suites[0].done), (2, 0));
    // A suite submitted between pages moves nothing.
    let newer = env.submit_as(Some(&mine), &manifest(&["d"])).await;
    let second = page(&env, &mine, &format!("?limit=2&after={next}")).await;
    assert_eq!(ids(&second), newest_first[2..]);
    assert_eq!(second.next, None);

    let all_mine = page(&env, &mine, "").await;
    assert_eq!(ids(&all_mine)[0], newer);
    assert_eq!(all_mine.suites.len(), 4);
    assert!(!ids(&all_mine).contains(&their_suite.as_str()));

    let theirs_page = page(&env, &theirs, "").await;
    assert_eq!(ids(&theirs_page), [their_suite.as_str()]);

    let everyone = page(&env, &admin, "").await;
    assert_eq!(everyone.suites.len(), 5);
    assert_eq!(
        ids(&everyone)[..2],
        [newer.as_str(), their_suite.as_str()],
        "the newest of any token first"
    );

    // Without a token: 401, as every /v1 route.
    let response = env.get("/v1/suites").await;
    assert_eq!(response.status().as_u16(), 401);
    env.finish().await;
}

#[tokio::test]
async fn bad_paging_is_a_json_400() {
    let env = TestEnv::start().await;
    for (query, line) in [
        (
            "?limit=0",
            "query string: limit must be from 1 to 200, not 0",
        ),
        (
            "?limit=201",
            "query string: limit must be from 1 to 200, not 201",
        ),
        ("?after=42", "`42` is not a suite id (a UUID)"),
    ] {
        let response = env.get(&format!("/v1/suites{query}")).await;
        assert_eq!(error_of(response).await, (400, line.to_owned()), "{query}");
    }
    let response = env.get("/v1/suites?limit=x").await;
    assert_eq!(response.status().as_u16(), 400);
    // An open producer lists the suites submitted without a token.
    let id = env.submit_as(None, &manifest(&["a"])).await;
    let response = env.get("/v1/suites").await;
    let listed: SuitePage = response.json().await.expect("a SuitePage");
    assert_eq!(ids(&listed), [id.as_str()]);
    env.finish().await;
}
