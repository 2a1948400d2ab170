mod support;
use support::*;

#[tokio::test]
async fn smoke() {
    let h = Harness::start().await;
    let r = h
        .get_job("/api/v4/projects/2/repository/files/x", TOK_APP)
        .await;
    h.assert_forwarded(r).await;
    h.forge.clear();
    let r = h
        .get_job("/api/v4/projects/2/repository/files/x", TOK_OTHER)
        .await;
    let body = h.assert_denied(r, 404).await;
    assert_eq!(body, r#"{"message":"404 Project Not Found"}"#);
    h.stop().await;
}
