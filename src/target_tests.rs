use super::*;
use crate::canonical::canonicalize;
use crate::config::Sources;

fn method(m: &str) -> Method {
    match Method::from_bytes(m.as_bytes()) {
        Ok(m) => m,
        Err(e) => panic!("{m}: {e}"),
    }
}

fn with(m: &str, raw: &str, params: &ClassParams<'_>, routes: &[Route]) -> Result<Target, Reject> {
    let path = canonicalize(raw, "", true)?;
    classify(&method(m), &path, None, params, routes, true)
}

fn run(m: &str, raw: &str) -> Result<Target, Reject> {
    with(m, raw, &ClassParams::default(), &[])
}

fn id(n: u64) -> Option<Ref> {
    Some(Ref::Id(n))
}

fn path(p: &str) -> Option<Ref> {
    Some(Ref::Path(p.to_owned()))
}

const READ: Action = Action::Read(None);
const REPO: Action = Action::Read(Some(Feature::Repository));

/// (class, project, action, job_id, shape): the parts of a Target most rows pin down.
type Want = (Class, Option<Ref>, Action, Option<u64>, Shape);

fn summary(t: &Target) -> Want {
    (t.class, t.project.clone(), t.action, t.job_id, t.shape)
}

fn check(rows: &[(&str, &str, Result<Want, ()>)], params: &ClassParams<'_>) {
    for (m, raw, want) in rows {
        let got = with(m, raw, params, &[]);
        match (want, &got) {
            (Ok(want), Ok(t)) => assert_eq!(&summary(t), want, "{m} {raw}"),
            (Err(()), Err(Reject::NotFound(_))) => {}
            _ => panic!("{m} {raw}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn ids_and_paths() {
    let rows: &[(&str, Option<Ref>)] = &[
        ("1", id(1)),
        ("42", id(42)),
        ("1234567890123456789", id(1_234_567_890_123_456_789)),
        ("9999999999999999999", id(9_999_999_999_999_999_999)),
        ("0", None),
        ("05", None),
        ("007", None),
        ("12345678901234567890", None),
        ("99999999999999999999", None),
        ("-5", None),
        ("+5", None),
        ("5 ", None),
        ("5\njunk", None),
        ("5\n", None),
        ("", None),
        ("g", None),
        ("g/p", path("g/p")),
        ("G/P", path("g/p")),
        ("g/sub/p", path("g/sub/p")),
        ("g_1/p.x-y", path("g_1/p.x-y")),
        ("5/p", path("5/p")),
        ("g/05", path("g/05")),
        ("g/", None),
        ("/g/p", None),
        ("g//p", None),
        ("g/.p", None),
        ("g/-p", None),
        ("g/../p", None),
        ("g/p/", None),
        ("g/p q", None),
        ("g/p\n", None),
        ("g/pé", None),
        ("g/p%2e", None),
    ];
    for (s, want) in rows {
        assert_eq!(&project_ref(s), want, "{s:?}");
        assert_eq!(is_id(s), matches!(want, Some(Ref::Id(_))), "{s:?}");
    }
}

#[test]
fn project_api() {
    let w = Action::Write;
    let f = |x| Action::Read(Some(x));
    let api = |p: Option<Ref>, a: Action| Ok((Class::Api, p, a, None, Shape::Api));
    let rows: &[(&str, &str, Result<Want, ()>)] = &[
        ("GET", "/api/v4/projects/1", api(id(1), READ)),
        ("HEAD", "/api/v4/projects/1", api(id(1), READ)),
        ("GET", "/api/v4/projects/1/", api(id(1), READ)),
        ("PUT", "/api/v4/projects/1", api(id(1), w)),
        ("DELETE", "/api/v4/projects/1", api(id(1), w)),
        ("OPTIONS", "/api/v4/projects/1", api(id(1), w)),
        ("GET", "/api/v4/projects/g%2Fp", api(path("g/p"), READ)),
        (
            "GET",
            "/api/v4/projects/G%2fSub%2FP/issues",
            api(path("g/sub/p"), READ),
        ),
        ("GET", "/API/V4/PROJECTS/1", api(id(1), READ)),
        ("GET", "/api/v4/%70rojects/1", api(id(1), READ)),
        ("GET", "/api/v4/projects/%31", api(id(1), READ)),
        // Feature reads.
        ("GET", "/api/v4/projects/1/repository", api(id(1), REPO)),
        (
            "GET",
            "/api/v4/projects/1/repository/files/a%2Fb.txt/raw",
            api(id(1), REPO),
        ),
        (
            "GET",
            "/api/v4/projects/1/Repository/tree",
            api(id(1), REPO),
        ),
        (
            "HEAD",
            "/api/v4/projects/1/repository/archive.zip",
            api(id(1), REPO),
        ),
        (
            "POST",
            "/api/v4/projects/1/repository/commits",
            api(id(1), w),
        ),
        ("GET", "/api/v4/projects/1/repositoryx", api(id(1), READ)),
        (
            "GET",
            "/api/v4/projects/1/jobs/artifacts/main/download",
            api(id(1), f(Feature::Artifacts)),
        ),
        (
            "GET",
            "/api/v4/projects/1/jobs/7/artifacts",
            api(id(1), f(Feature::Artifacts)),
        ),
        (
            "GET",
            "/api/v4/projects/1/jobs/7/artifacts/dir/file.txt",
            api(id(1), f(Feature::Artifacts)),
        ),
        (
            "GET",
            "/api/v4/projects/1/jobs/07/artifacts",
            api(id(1), READ),
        ),
        ("GET", "/api/v4/projects/1/jobs/artifacts", api(id(1), READ)),
        ("GET", "/api/v4/projects/1/jobs/7", api(id(1), READ)),
        ("GET", "/api/v4/projects/1/jobs", api(id(1), READ)),
        (
            "POST",
            "/api/v4/projects/1/jobs/7/artifacts/keep",
            api(id(1), w),
        ),
        (
            "DELETE",
            "/api/v4/projects/1/jobs/7/artifacts",
            api(id(1), w),
        ),
        (
            "GET",
            "/api/v4/projects/1/packages",
            api(id(1), f(Feature::Packages)),
        ),
        (
            "GET",
            "/api/v4/projects/1/packages/maven/a/b/1.0/x.jar",
            api(id(1), f(Feature::Packages)),
        ),
        (
            "PUT",
            "/api/v4/projects/1/packages/generic/p/1/f",
            api(id(1), w),
        ),
        (
            "GET",
            "/api/v4/projects/1/registry/repositories",
            api(id(1), f(Feature::Registry)),
        ),
        (
            "GET",
            "/api/v4/projects/1/releases",
            api(id(1), f(Feature::Releases)),
        ),
        (
            "GET",
            "/api/v4/projects/1/releases/v1",
            api(id(1), f(Feature::Releases)),
        ),
        ("POST", "/api/v4/projects/1/releases", api(id(1), w)),
        (
            "GET",
            "/api/v4/projects/1/environments",
            api(id(1), f(Feature::Environments)),
        ),
        (
            "GET",
            "/api/v4/projects/1/deployments/3",
            api(id(1), f(Feature::Environments)),
        ),
        ("POST", "/api/v4/projects/1/deployments", api(id(1), w)),
        ("GET", "/api/v4/projects/1/issues", api(id(1), READ)),
        ("GET", "/api/v4/projects/1/variables", api(id(1), READ)),
        // An encoded slash never reaches the feature position.
        (
            "GET",
            "/api/v4/projects/1/repository%2Ffiles",
            api(id(1), READ),
        ),
        (
            "GET",
            "/api/v4/projects/g%2Fp%2Frepository",
            api(path("g/p/repository"), READ),
        ),
        // No project, or not one we can read exactly.
        (
            "GET",
            "/api/v4/projects",
            Ok((Class::Unknown, None, READ, None, Shape::Api)),
        ),
        (
            "GET",
            "/api/v4/projects/",
            Ok((Class::Unknown, None, READ, None, Shape::Api)),
        ),
        (
            "POST",
            "/api/v4/projects",
            Ok((Class::Unknown, None, w, None, Shape::Api)),
        ),
        ("GET", "/api/v4/projects/05", Err(())),
        ("GET", "/api/v4/projects/0", Err(())),
        ("GET", "/api/v4/projects/12345678901234567890", Err(())),
        ("GET", "/api/v4/projects/-1", Err(())),
        ("GET", "/api/v4/projects/g", Err(())),
        ("GET", "/api/v4/projects/g/p", Err(())),
        ("GET", "/api/v4/projects/5.json", Err(())),
        ("GET", "/api/v4/projects/g%2F", Err(())),
        ("GET", "/api/v4/projects/%2Fg%2Fp", Err(())),
        ("GET", "/api/v4/projects/g%2F.p", Err(())),
        ("GET", "/api/v4/projects/g%2Fp%20", Err(())),
        ("GET", "/api/v4/projects/g%2Fp%C3%A9", Err(())),
        // Refused by canonicalisation already.
        ("GET", "/api/v4/projects/1%0Ajunk", Err(())),
        ("GET", "/api/v4/projects/5%0A", Err(())),
        ("GET", "/api/v4/projects/g%2F..%2Fp", Err(())),
        ("GET", "/api/v4/projects/g%252Fp", Err(())),
        ("GET", "/api/v4/projects/%252e%252e", Err(())),
        ("GET", "/api/v4/projects//1", Err(())),
        ("GET", "/api/v4/projects/1;x", Err(())),
        ("GET", "/api/v4/projects/1%3B", Err(())),
        ("GET", "/api/v4/projects/g%5Cp", Err(())),
        ("GET", "/api/v4/projects/1/../2", Err(())),
        ("GET", "/api/v4/job/../projects/2", Err(())),
    ];
    check(rows, &ClassParams::default());
}

#[test]
fn job_own_and_runner_routes() {
    let w = Action::Write;
    let own = |a: Action| Ok((Class::JobOwn, None, a, None, Shape::Api));
    let runner = |j: u64| Ok((Class::RunnerOwn, None, w, Some(j), Shape::Api));
    let dep = |j: u64| {
        Ok((
            Class::RunnerDependency,
            None,
            Action::Read(Some(Feature::Artifacts)),
            Some(j),
            Shape::Api,
        ))
    };
    let unknown = |a: Action| Ok((Class::Unknown, None, a, None, Shape::Api));
    let rows: &[(&str, &str, Result<Want, ()>)] = &[
        ("GET", "/api/v4/job", own(READ)),
        ("GET", "/api/v4/job/", own(READ)),
        ("GET", "/api/v4/job/allowed_agents", own(READ)),
        ("GET", "/api/v4/job/x", own(READ)),
        ("GET", "/API/V4/JOB", own(READ)),
        ("GET", "/api/v4/%6Aob", own(READ)),
        ("POST", "/api/v4/job/x", own(w)),
        ("GET", "/api/v4/jobx", unknown(READ)),
        ("GET", "/api/v4/job.json", unknown(READ)),
        ("GET", "/api/v4/jobs", unknown(READ)),
        ("GET", "/api/v4/jobs/5", unknown(READ)),
        ("GET", "/api/v4%2Fjob", unknown(READ)),
        ("GET", "/api/v4/job%2Fx", unknown(READ)),
        ("GET", "/api/v4/jobs%2F5%2Fartifacts", unknown(READ)),
        // Runner-own: exactly these four method + path pairs.
        ("PUT", "/api/v4/jobs/5", runner(5)),
        ("PUT", "/api/v4/jobs/5/", runner(5)),
        ("PATCH", "/api/v4/jobs/5/trace", runner(5)),
        ("POST", "/api/v4/jobs/5/artifacts", runner(5)),
        ("POST", "/api/v4/jobs/5/artifacts/authorize", runner(5)),
        (
            "POST",
            "/API/V4/JOBS/1234567890123456789/ARTIFACTS",
            runner(1_234_567_890_123_456_789),
        ),
        // Wrong method: not runner-own.
        ("POST", "/api/v4/jobs/5", unknown(w)),
        ("PATCH", "/api/v4/jobs/5", unknown(w)),
        ("GET", "/api/v4/jobs/5/trace", unknown(READ)),
        ("PUT", "/api/v4/jobs/5/trace", unknown(w)),
        ("PUT", "/api/v4/jobs/5/artifacts", unknown(w)),
        ("DELETE", "/api/v4/jobs/5/artifacts", unknown(w)),
        ("GET", "/api/v4/jobs/5/artifacts/authorize", unknown(READ)),
        ("PUT", "/api/v4/jobs/5/artifacts/authorize", unknown(w)),
        ("POST", "/api/v4/jobs/request", unknown(w)),
        ("PUT", "/api/v4/jobs/5.json", Err(())),
        ("POST", "/api/v4/jobs/5/trace/x", unknown(w)),
        // Runner dependency download: GET (and HEAD) only, no sub-path in runner.rb.
        ("GET", "/api/v4/jobs/5/artifacts", dep(5)),
        ("HEAD", "/api/v4/jobs/5/artifacts", dep(5)),
        ("GET", "/api/v4/jobs/5/artifacts/", dep(5)),
        ("GET", "/api/v4/jobs/5/artifacts/file.txt", unknown(READ)),
        // A runner route with a job id that is not canonical.
        ("PUT", "/api/v4/jobs/05", Err(())),
        ("PUT", "/api/v4/jobs/0", Err(())),
        ("PUT", "/api/v4/jobs/request", Err(())),
        ("PATCH", "/api/v4/jobs/12345678901234567890/trace", Err(())),
        ("POST", "/api/v4/jobs/-5/artifacts", Err(())),
        ("GET", "/api/v4/jobs/5x/artifacts", Err(())),
        ("GET", "/api/v4/jobs/5%0A/artifacts", Err(())),
        ("GET", "/api/v4/jobs/5%2F6/artifacts", Err(())),
    ];
    check(rows, &ClassParams::default());
}

#[test]
fn git_routes() {
    let git = |p: &str, a: Action| Ok((Class::Git, path(p), a, None, Shape::Git));
    let unknown_git = |a: Action| Ok((Class::Unknown, None, a, None, Shape::Git));
    let push = Action::Push;
    let oid = "a".repeat(64);
    let lfs_get = format!("/g/p.git/gitlab-lfs/objects/{oid}");
    let lfs_put = format!("/g/p.git/gitlab-lfs/objects/{oid}/12");
    let lfs_put_auth = format!("/g/p.git/gitlab-lfs/objects/{oid}/12/authorize");
    let legacy = format!("/g/p.git/info/lfs/objects/{oid}");
    let rows: Vec<(&str, &str, Result<Want, ()>)> = vec![
        ("GET", "/g/p.git/info/refs", git("g/p", REPO)),
        ("GET", "/g/p/info/refs", git("g/p", REPO)),
        ("GET", "/g/p.git/info/refs/", git("g/p", REPO)),
        ("GET", "/G/P.GIT/INFO/REFS", git("g/p", REPO)),
        ("GET", "/G/P.Git/info/refs", git("g/p", REPO)),
        ("GET", "/g/sub/p.git/info/refs", git("g/sub/p", REPO)),
        ("POST", "/g/p.git/git-upload-pack", git("g/p", REPO)),
        ("POST", "/g/p/git-upload-pack", git("g/p", REPO)),
        ("POST", "/g/p.git/git-receive-pack", git("g/p", push)),
        ("POST", "/g/p/git-receive-pack", git("g/p", push)),
        ("GET", "/g/p.wiki.git/info/refs", git("g/p", REPO)),
        ("POST", "/g/p.wiki.git/git-receive-pack", git("g/p", push)),
        ("GET", "/g/p.design.git/info/refs", git("g/p", REPO)),
        ("GET", "/g/P.WIKI.GIT/info/refs", git("g/p", REPO)),
        ("GET", "/g/p.wiki/info/refs", git("g/p.wiki", REPO)),
        // LFS.
        ("POST", "/g/p.git/info/lfs/objects/batch", git("g/p", push)),
        ("POST", "/g/p.git/info/lfs/objects", git("g/p", push)),
        ("GET", legacy.as_str(), git("g/p", REPO)),
        ("PUT", legacy.as_str(), git("g/p", push)),
        ("GET", "/g/p.git/info/lfs/locks", git("g/p", REPO)),
        ("POST", "/g/p.git/info/lfs/locks", git("g/p", push)),
        ("POST", "/g/p.git/info/lfs/locks/verify", git("g/p", REPO)),
        ("DELETE", "/g/p.git/info/lfs/locks/verify", git("g/p", push)),
        ("POST", "/g/p.git/info/lfs/locks/3/unlock", git("g/p", push)),
        ("GET", "/g/p.git/info/lfs/locks/3/unlock", git("g/p", push)),
        ("GET", "/g/p.git/info/lfs/locks/3", git("g/p", REPO)),
        ("DELETE", "/g/p.git/info/lfs/locks/3", git("g/p", push)),
        ("GET", lfs_get.as_str(), git("g/p", REPO)),
        ("HEAD", lfs_get.as_str(), git("g/p", REPO)),
        ("PUT", lfs_put.as_str(), git("g/p", push)),
        ("PUT", lfs_put_auth.as_str(), git("g/p", push)),
        ("POST", lfs_get.as_str(), git("g/p", push)),
        ("GET", "/g/p.wiki.git/info/lfs/locks", git("g/p", REPO)),
        // Not a Git route: unknown, answered in Git's shape.
        ("GET", "/g/p.git", unknown_git(READ)),
        ("GET", "/g/p.git/", unknown_git(READ)),
        ("GET", "/g/p.git/info", unknown_git(READ)),
        ("GET", "/g/p.git/info/lfs", unknown_git(READ)),
        ("GET", "/g/p.git/gitlab-lfs/objects", unknown_git(READ)),
        (
            "GET",
            "/g/p.git/info/lfs/locks/3/unlock/x",
            unknown_git(READ),
        ),
        ("GET", "/g/p.git/HEAD", unknown_git(READ)),
        ("GET", "/g/p.git/objects/info/packs", unknown_git(READ)),
        ("GET", "/a.git/b/p.git/info/refs", unknown_git(READ)),
        (
            "POST",
            "/g/p/info/lfs/objects/batch",
            Ok((Class::Unknown, None, Action::Write, None, Shape::Api)),
        ),
        // A Git path must be a project path.
        ("GET", "/5.git/info/refs", Err(())),
        ("GET", "/5/info/refs", Err(())),
        ("GET", "/p.git/info/refs", Err(())),
        ("GET", "/info/refs", Err(())),
        ("POST", "/git-upload-pack", Err(())),
        ("GET", "/.git/info/refs", Err(())),
        ("GET", "/g/.wiki.git/info/refs", Err(())),
        ("GET", "/g/-/snippets/1.git/info/refs", Err(())),
        ("GET", "/g/p%2e.git/info/refs", git("g/p.", REPO)),
    ];
    check(&rows, &ClassParams::default());

    // The deciding parameters.
    let svc = |s| ClassParams {
        service: Some(s),
        ..ClassParams::default()
    };
    check(
        &[("GET", "/g/p.git/info/refs", git("g/p", REPO))],
        &svc("git-upload-pack"),
    );
    check(
        &[("GET", "/g/p.git/info/refs", git("g/p", push))],
        &svc("git-receive-pack"),
    );
    check(
        &[("GET", "/g/p/info/refs", git("g/p", push))],
        &svc("git-receive-pack"),
    );
    check(
        &[("GET", "/g/p.git/info/refs", git("g/p", push))],
        &svc("git-upload-archive"),
    );
    check(
        &[("GET", "/g/p.git/info/refs", git("g/p", push))],
        &svc("Git-Upload-Pack"),
    );
    check(&[("GET", "/g/p.git/info/refs", git("g/p", push))], &svc(""));
    let op = |o| ClassParams {
        lfs_operation: Some(o),
        ..ClassParams::default()
    };
    check(
        &[("POST", "/g/p.git/info/lfs/objects/batch", git("g/p", REPO))],
        &op("download"),
    );
    check(
        &[("POST", "/g/p.git/info/lfs/objects/batch", git("g/p", push))],
        &op("upload"),
    );
    check(
        &[("POST", "/g/p.git/info/lfs/objects/batch", git("g/p", push))],
        &op("Download"),
    );
    check(
        &[("POST", "/g/p.git/info/lfs/objects/batch", git("g/p", push))],
        &op("verify"),
    );
}

#[test]
fn an_lfs_batch_operation_in_the_query_overrides_the_body() {
    // Rails' `params` merges the query over the JSON body, so `?operation=upload` beside a
    // `download` body is an upload at the forge: only a query that agrees keeps the read.
    let git = |a: Action| Ok((Class::Git, path("g/p"), a, None, Shape::Git));
    let batch = "/g/p.git/info/lfs/objects/batch";
    let rows: &[(&[(&str, &str)], Action)] = &[
        (&[], REPO),
        (&[("operation", "download")], REPO),
        (
            &[("operation", "download"), ("operation", "download")],
            REPO,
        ),
        (&[("other", "upload"), ("operations", "upload")], REPO),
        (&[("operation", "upload")], Action::Push),
        (
            &[("operation", "download"), ("operation", "upload")],
            Action::Push,
        ),
        (&[("operation", "")], Action::Push),
        (&[("operation[]", "download")], Action::Push),
        (&[("[operation]", "download")], Action::Push),
        (&[("operation[x]", "download")], Action::Push),
    ];
    for (query, want) in rows {
        let params = ClassParams {
            lfs_operation: Some("download"),
            registry_params: query.to_vec(),
            ..ClassParams::default()
        };
        check(&[("POST", batch, git(*want))], &params);
    }
    // The query never turns a body that is not a download into one.
    let params = ClassParams {
        lfs_operation: Some("upload"),
        registry_params: vec![("operation", "download")],
        ..ClassParams::default()
    };
    check(&[("POST", batch, git(Action::Push))], &params);
}

#[test]
fn wiki_and_design_shadow_the_project_of_their_own_name() {
    let shadow = |raw: &str| repository_shadow(&canonicalize(raw, "", true).expect(raw));
    assert_eq!(shadow("/g/p.wiki.git/info/refs"), path("g/p.wiki"));
    assert_eq!(
        shadow("/g/P.Design.git/git-upload-pack"),
        path("g/p.design")
    );
    assert_eq!(
        shadow("/g/p.wiki.git/info/lfs/objects/batch"),
        path("g/p.wiki")
    );
    assert_eq!(shadow("/g/p.git/info/refs"), None);
    assert_eq!(shadow("/g/p.wiki/info/refs"), None);
    assert_eq!(shadow("/api/v4/projects/1"), None);
}

fn registry_params<'a>(scopes: &[&'a str], query: &[(&'a str, &'a str)]) -> ClassParams<'a> {
    ClassParams {
        service: query.iter().find(|(k, _)| *k == "service").map(|(_, v)| *v),
        scopes: scopes.to_vec(),
        registry_params: query.to_vec(),
        ..ClassParams::default()
    }
}

fn scope(kind: &str, image: &str, actions: &[&str]) -> RegistryScope {
    RegistryScope {
        kind: kind.to_owned(),
        image: image.to_owned(),
        actions: actions.iter().map(|a| (*a).to_owned()).collect(),
    }
}

#[test]
fn registry_scopes() {
    let pull = |image: &str| scope("repository", image, &["pull"]);
    type Row<'a> = (&'a [&'a str], Vec<RegistryScope>, Action);
    let reg = Action::Read(Some(Feature::Registry));
    let rows: &[Row<'_>] = &[
        (&["repository:g/p:pull"], vec![pull("g/p")], reg),
        (
            &["repository:g/p:pull,push"],
            vec![scope("repository", "g/p", &["pull", "push"])],
            Action::Push,
        ),
        (
            &["repository:g/p:push"],
            vec![scope("repository", "g/p", &["push"])],
            Action::Push,
        ),
        (
            &["repository:g/p:delete"],
            vec![scope("repository", "g/p", &["delete"])],
            Action::Push,
        ),
        (
            &["repository:g/p:*"],
            vec![scope("repository", "g/p", &["*"])],
            Action::Push,
        ),
        (&["repository:G/P/Image:pull"], vec![pull("g/p/image")], reg),
        // Repeated parameters, and several scopes in one value.
        (
            &["repository:g/p:pull", "repository:h/q:push"],
            vec![pull("g/p"), scope("repository", "h/q", &["push"])],
            Action::Push,
        ),
        (
            &["repository:g/p:pull repository:h/q:pull"],
            vec![pull("g/p"), pull("h/q")],
            reg,
        ),
        (
            &["  repository:g/p:pull\trepository:h/q:pull\n"],
            vec![pull("g/p"), pull("h/q")],
            reg,
        ),
        (
            &["repository:g/p:pull\x0brepository:h/q:pull\x0c"],
            vec![pull("g/p"), pull("h/q")],
            reg,
        ),
        (
            &["repository:g/p:pull", "", "repository:h/q:pull"],
            vec![pull("g/p"), pull("h/q")],
            reg,
        ),
        // Actions: split on ',', unknown ones dropped, duplicates dropped, order kept.
        (
            &["repository:g/p:push,pull,push,pull"],
            vec![scope("repository", "g/p", &["push", "pull"])],
            Action::Push,
        ),
        (&["repository:g/p:pull,,admin,PUSH"], vec![pull("g/p")], reg),
        (&["repository:g/p:pull,"], vec![pull("g/p")], reg),
        (&["repository:g/p:pull:push"], vec![], reg),
        (&["repository:g/p:"], vec![], reg),
        (&["repository:g/p:admin"], vec![], reg),
        // Types GitLab does not grant to a job token.
        (&["registry:catalog:*"], vec![], reg),
        (
            &["registry:catalog:*", "repository:g/p:pull"],
            vec![pull("g/p")],
            reg,
        ),
        (&["repository(plugin):g/p:pull"], vec![], reg),
        (&["Repository:g/p:pull"], vec![], reg),
        (&["repository :g/p:pull"], vec![], reg),
        // Bad shapes: GitLab raises or finds nothing.
        (&["repository"], vec![], reg),
        (&["repository:g/p"], vec![], reg),
        (&["repository::pull"], vec![], reg),
        (&[":g/p:pull"], vec![], reg),
        (&["g/p:pull"], vec![], reg),
        (&["repository:g:pull"], vec![], reg),
        (&["repository:g/:pull"], vec![], reg),
        (&["repository:/g/p:pull"], vec![], reg),
        (&["repository:g//p:pull"], vec![], reg),
        (&["repository:g/../p:pull"], vec![], reg),
        (&["repository:g/p/:pull"], vec![], reg),
        (&["repository:g/-p:pull"], vec![], reg),
        (&["repository:g/p-:pull"], vec![], reg),
        (&["repository:g/p_-x:pull"], vec![], reg),
        (&["repository:g/p___x:pull"], vec![], reg),
        (&["repository:g/p é:pull"], vec![], reg),
        (&["repository:g/\u{212a}:pull"], vec![], reg),
        (&["repository:g/p%2Fx:pull"], vec![], reg),
        (&["repository:g/p@sha256:pull"], vec![], reg),
        (&["repository:g/p:latest:pull"], vec![], reg),
        // Valid separators.
        (
            &["repository:g/p.x_y__z---w/i:pull"],
            vec![pull("g/p.x_y__z---w/i")],
            reg,
        ),
        (&["repository:1/2:pull"], vec![pull("1/2")], reg),
    ];
    for (scopes, want, action) in rows {
        let (want, action) = (want.clone(), *action);
        let params = registry_params(scopes, &[("service", "container_registry")]);
        for raw in [
            "/jwt/auth",
            "/JWT/Auth",
            "/jwt/auth/",
            "/jwt/auth.json",
            "/jwt/%61uth",
        ] {
            let t = match with("GET", raw, &params, &[]) {
                Ok(t) => t,
                Err(e) => panic!("{raw} {scopes:?}: {e}"),
            };
            assert_eq!(
                (t.class, t.project.clone(), t.action, t.shape),
                (Class::Registry, None, action, Shape::Registry),
                "{raw} {scopes:?}"
            );
            let request = t.registry.expect("registry request");
            assert_eq!(request.scopes, want, "{raw} {scopes:?}");
        }
    }
}

#[test]
fn registry_login_and_passthrough() {
    let login = Ok((Class::RegistryLogin, None, READ, None, Shape::Registry));
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: [Case<'_>; 5] = [
        (&[], &[("service", "container_registry"), ("account", "u")]),
        (&[""], &[("service", "container_registry"), ("scope", "")]),
        (
            &[" \t"],
            &[("service", "container_registry"), ("scope", " \t")],
        ),
        (&[], &[]),
        (
            &["repository:g/p:push"],
            &[
                ("service", "dependency_proxy"),
                ("scope", "repository:g/p:push"),
            ],
        ),
    ];
    for (scopes, query) in cases {
        let params = registry_params(scopes, query);
        check(&[("GET", "/jwt/auth", login.clone())], &params);
        assert_eq!(
            with("GET", "/jwt/auth", &params, &[]).map(|t| t.registry),
            Ok(None)
        );
    }

    let query = [
        ("account", "gitlab-ci-token"),
        ("scope", "repository:g/p:pull"),
        ("service", "container_registry"),
        ("client_id", "docker"),
        ("offline_token", "true"),
        ("job_token", "x"),
        ("Service", "y"),
        ("account", "again"),
    ];
    let params = registry_params(&["repository:g/p:pull"], &query);
    let request = with("GET", "/jwt/auth", &params, &[])
        .ok()
        .and_then(|t| t.registry)
        .expect("registry");
    let kept: Vec<(&str, &str)> = request
        .passthrough
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        kept,
        [
            ("account", "gitlab-ci-token"),
            ("service", "container_registry"),
            ("client_id", "docker"),
            ("offline_token", "true"),
            ("account", "again"),
        ]
    );

    // Not the token endpoint.
    let params = registry_params(&["repository:g/p:pull"], &[]);
    for raw in [
        "/jwt",
        "/jwt/auth/x",
        "/jwt/authx",
        "/jwt/auth.",
        "/jwt/auth.a.b",
        "/jwt%2Fauth",
    ] {
        let t = with("GET", raw, &params, &[]).expect(raw);
        assert_eq!(t.class, Class::Unknown, "{raw}");
    }
}

fn route(methods: &[&str], re: &str) -> Route {
    Route {
        methods: methods.iter().map(|m| method(m)).collect(),
        path: regex::Regex::new(re).expect(re),
        sources: Sources {
            projects: vec![],
            groups: vec![],
        },
    }
}

#[test]
fn configured_routes_first_match() {
    let routes = [
        route(&["GET"], "^/api/v4/groups/42/-/packages/maven/"),
        route(&[], "^/api/v4/groups/42/"),
        route(
            &["POST", "PUT"],
            "^/api/v4/groups/g/sub/-/packages/npm/@s/pkg$",
        ),
        route(&[], "^/api/v4/jobs/"),
        route(&[], "^/api/v4/job"),
    ];
    let p = ClassParams::default();
    let rows: &[(&str, &str, Class, Option<usize>)] = &[
        (
            "GET",
            "/api/v4/groups/42/-/packages/maven/a/b",
            Class::Route,
            Some(0),
        ),
        (
            "HEAD",
            "/api/v4/groups/42/-/packages/maven/a/b",
            Class::Route,
            Some(1),
        ),
        (
            "PUT",
            "/api/v4/groups/42/-/packages/maven/a/b",
            Class::Route,
            Some(1),
        ),
        ("GET", "/api/v4/groups/42", Class::Unknown, None),
        ("GET", "/API/V4/GROUPS/42/x", Class::Unknown, None),
        (
            "PUT",
            "/api/v4/groups/g%2Fsub/-/packages/npm/@s%2Fpkg",
            Class::Route,
            Some(2),
        ),
        (
            "GET",
            "/api/v4/groups/g%2Fsub/-/packages/npm/@s%2Fpkg",
            Class::Unknown,
            None,
        ),
        (
            "PUT",
            "/api/v4/groups/g%2Fsub/-/packages/npm/@s%2Fpkg/",
            Class::Unknown,
            None,
        ),
        // Fixed classes come first.
        ("PUT", "/api/v4/jobs/5", Class::RunnerOwn, None),
        ("GET", "/api/v4/job", Class::JobOwn, None),
        ("POST", "/api/v4/jobs/request", Class::Route, Some(3)),
        ("GET", "/api/v4/jobs/5/trace", Class::Route, Some(3)),
    ];
    for &(m, raw, class, index) in rows {
        let t = with(m, raw, &p, &routes).expect(raw);
        assert_eq!((t.class, t.route), (class, index), "{m} {raw}");
        if class == Class::Route {
            assert_eq!((t.project, t.shape), (None, Shape::Api));
            assert_eq!(
                t.action,
                if is_read(&method(m)) {
                    READ
                } else {
                    Action::Write
                }
            );
        }
    }
}

#[test]
fn unknown_paths() {
    let rows: &[(&str, &str, Shape)] = &[
        ("GET", "/", Shape::Api),
        ("GET", "/api/graphql", Shape::Api),
        ("POST", "/api/graphql", Shape::Api),
        ("GET", "/api/v4/groups/1", Shape::Api),
        ("GET", "/api/v4/internal/allowed", Shape::Api),
        ("GET", "/api/v4/packages/npm/x", Shape::Api),
        ("GET", "/api/v3/projects/1", Shape::Api),
        ("GET", "/api/v4/projects.json", Shape::Api),
        ("GET", "/g/p/-/jobs/1/artifacts/download", Shape::Api),
        ("GET", "/-/profile", Shape::Api),
        ("GET", "/g/p.git", Shape::Git),
        ("GET", "/g/p.GIT/x", Shape::Git),
    ];
    for &(m, raw, shape) in rows {
        let t = run(m, raw).expect(raw);
        assert_eq!(
            (t.class, t.project, t.shape),
            (Class::Unknown, None, shape),
            "{raw}"
        );
    }
}

#[test]
fn without_job_token_unreadable_targets_are_unknown() {
    let p = ClassParams::default();
    for raw in [
        "/api/v4/projects/05",
        "/api/v4/projects/1%0Ajunk",
        "/api/v4/projects/%zz",
        "/api/v4/projects/g/p",
        "/5.git/info/refs",
        "/api/v4/jobs/05/artifacts",
    ] {
        let path = canonicalize(raw, "", false).expect(raw);
        let t = classify(&Method::GET, &path, None, &p, &[], false).expect(raw);
        assert_eq!(t.class, Class::Unknown, "{raw}");
        // The same with a job token is refused (when canonicalisation lets it through).
        assert!(
            matches!(
                classify(&Method::GET, &path, None, &p, &[], true),
                Err(Reject::NotFound(_))
            ),
            "{raw}"
        );
    }
    // And readable ones classify the same either way.
    let path = canonicalize("/api/v4/projects/%zz/x/1", "", false).expect("path");
    assert_eq!(path.decoded, "/api/v4/projects/%zz/x/1");
    let path = canonicalize("/G/P.git/info/refs", "", false).expect("path");
    let t = classify(&Method::GET, &path, None, &p, &[], false).expect("git");
    assert_eq!((t.class, t.project), (Class::Git, path_ref("g/p")));
}

fn path_ref(p: &str) -> Option<Ref> {
    path(p)
}

#[test]
fn relative_root_is_stripped_before_classifying() {
    let p = ClassParams::default();
    type Row = (&'static str, Result<(Class, Option<Ref>), ()>);
    let rows: &[Row] = &[
        ("/gitlab/api/v4/projects/1", Ok((Class::Api, id(1)))),
        ("/gitlab/g/p.git/info/refs", Ok((Class::Git, path("g/p")))),
        ("/gitlab/api/v4/job", Ok((Class::JobOwn, None))),
        ("/gitlab/jwt/auth", Ok((Class::RegistryLogin, None))),
        ("/gitlab", Ok((Class::Unknown, None))),
        (
            "/gitlab/gitlab/api/v4/projects/1",
            Ok((Class::Unknown, None)),
        ),
        ("/api/v4/projects/1", Err(())),
        ("/gitlabapi/v4/projects/1", Err(())),
    ];
    for (raw, want) in rows {
        let got = canonicalize(raw, "/gitlab", true)
            .and_then(|path| classify(&Method::GET, &path, None, &p, &[], true))
            .map(|t| (t.class, t.project));
        match (want, &got) {
            (Ok(w), Ok(g)) => assert_eq!(w, g, "{raw}"),
            (Err(()), Err(Reject::NotFound(_))) => {}
            _ => panic!("{raw}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn image_path_matches_gitlabs_regex() {
    // Cross-check the hand-written matcher against the regex it transcribes, on every
    // string of up to five characters over an alphabet that exercises each rule.
    let re = regex::Regex::new(r"\A[a-z0-9]+(?:(?:[._/]|__|-*)[a-z0-9])*\z").expect("regex");
    let alphabet = ['a', '0', '.', '_', '/', '-', 'A', ':'];
    let mut frontier = vec![String::new()];
    for _ in 0..5 {
        let mut next = Vec::new();
        for s in &frontier {
            for c in alphabet {
                let t = format!("{s}{c}");
                let components = t.split('/').count();
                let want = re.is_match(&t) && (2..20).contains(&components);
                assert_eq!(is_image_path(&t), want, "{t:?}");
                next.push(t);
            }
        }
        frontier = next;
    }
    let deep = vec!["a"; 19].join("/");
    assert!(is_image_path(&deep));
    assert!(!is_image_path(&format!("{deep}/a")));
}

#[test]
fn shapes_for_refusals() {
    let rows: &[(&str, Shape)] = &[
        ("/g/p.git/info/refs", Shape::Git),
        ("/gitlab/g/p.git/info/refs%0A", Shape::Git),
        ("/5.git/info/refs", Shape::Git),
        ("/g/p/INFO/REFS", Shape::Git),
        ("/g/p/git-upload-pack/", Shape::Git),
        ("/g/p/git-receive-pack", Shape::Git),
        ("/g/p.GIT", Shape::Git),
        ("/g/p.git/info/lfs/objects/batch", Shape::Git),
        ("/jwt/auth", Shape::Registry),
        ("/gitlab/JWT/auth.json", Shape::Registry),
        ("/jwt/auth/", Shape::Registry),
        ("/jwt/authx", Shape::Api),
        ("/api/v4/projects/05", Shape::Api),
        ("/", Shape::Api),
        ("", Shape::Api),
    ];
    for &(raw, shape) in rows {
        assert_eq!(shape_of_path(raw), shape, "{raw}");
    }
}

#[test]
fn split_segments_drops_the_leading_slash_and_trailing_empty_segments() {
    let none: Vec<&str> = Vec::new();
    assert_eq!(split_segments("/"), none);
    assert_eq!(split_segments("//"), none);
    assert_eq!(split_segments(""), none);
    assert_eq!(split_segments("/a//b/"), ["a", "", "b"]);
    assert_eq!(split_segments("/a/b//"), ["a", "b"]);
    assert_eq!(split_segments("a/b"), ["a", "b"]);
}

/// The no-`%` fast path (segments borrowed from the lower-cased path) reads exactly what
/// decoding and lower-casing each segment on its own reads.
#[test]
fn segments_fast_path_matches_per_segment_decoding() {
    for raw in [
        "/",
        "/API/V4/Projects/1/",
        "/a//B",
        "/G/P.git/info/refs",
        "/api/v4/projects/1/packages/generic/pkg/1.0/small.bin",
        "/api/v4/projects/G%2FP/issues",
        "/x%zz/Y",
    ] {
        let path = match canonicalize(raw, "", false) {
            Ok(p) => p,
            Err(e) => panic!("{raw}: {e}"),
        };
        let segments = match Segments::new(&path, false) {
            Ok(s) => s,
            Err(e) => panic!("{raw}: {e}"),
        };
        let slow: Vec<String> = split_segments(&path.raw)
            .iter()
            .map(|s| {
                percent_decode_segment(s)
                    .map_or_else(|| (*s).to_owned(), |d| d.into_owned())
                    .to_ascii_lowercase()
            })
            .collect();
        assert_eq!(segments.lower_strs(), slow, "{raw}");
        assert_eq!(segments.raw, split_segments(&path.raw), "{raw}");
    }
}

/// `repository_shadow` skips paths without `.wiki.git`/`.design.git` by looking at the whole
/// decoded path; a path that did not decode whole (no job token) must still be read segment
/// by segment.
#[test]
fn shadow_of_a_path_that_did_not_decode_whole() {
    let path = match canonicalize("/g/p%2Ewiki.git/x%zz", "", false) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(repository_shadow(&path), Some(Ref::Path("g/p.wiki".into())));
    let plain = match canonicalize("/g/p/-/issues", "", true) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(repository_shadow(&plain), None);
}
