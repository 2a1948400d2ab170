//! Tests of [`super`]: each slot, each parser, and the cases where Rack/Ruby behave
//! unexpectedly. Expected bytes of Ruby's `Base64.decode64` and Rack 2.2's parameter and
//! multipart results were taken from Ruby 3.1 with Rack 2.2.22.

use super::body::{part_heads, rack_dequote, rack_value};
use super::*;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::Method;

/// Expected `(name, value)` pairs.
type Pairs<'a> = &'a [(&'a str, &'a str)];

const TOKEN: &str = "glcbt-64_1a2b3c4d5e6f7g8h9i0j";
const LEGACY: &str = "Xq7yZ-legacy-job-tok3n";

fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            HeaderValue::from_bytes(value).expect("test header value"),
        );
    }
    map
}

fn values(c: &Credential) -> Vec<&str> {
    c.candidates.iter().map(Secret::expose).collect()
}

fn single(pairs: &[(&str, &[u8])]) -> Credential {
    let mut creds = from_headers(&headers(pairs));
    assert_eq!(creds.len(), 1, "expected one credential from {pairs:?}");
    creds.remove(0)
}

fn basic(userpass: &str) -> Vec<u8> {
    format!("Basic {}", STANDARD.encode(userpass)).into_bytes()
}

fn jwt(payload: &str) -> String {
    format!(
        "{}.{}.c2lnbmF0dXJl",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(payload)
    )
}

fn param(name: &str, value: &str) -> Param {
    Param {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

fn pairs(params: &[Param]) -> Vec<(&str, &str)> {
    params
        .iter()
        .map(|p| (p.name.as_str(), p.value.as_str()))
        .collect()
}

// --- headers ---------------------------------------------------------------------------------

#[test]
fn token_headers_in_every_spelling() {
    let cases: &[(&str, bool)] = &[
        ("JOB-TOKEN", true),
        ("job-token", true),
        ("Job-Token", true),
        ("JOB_TOKEN", true),
        ("job_token", true),
        ("PRIVATE-TOKEN", false),
        ("private_token", false),
        ("Deploy-Token", false),
        ("DEPLOY_TOKEN", false),
        ("X-NuGet-ApiKey", false),
        ("x_nuget_apikey", false),
    ];
    for &(name, dedicated) in cases {
        let c = single(&[(name, LEGACY.as_bytes())]);
        assert_eq!(c.slot, Slot::Header(name.to_ascii_lowercase()), "{name}");
        assert_eq!(c.dedicated, dedicated, "{name}");
        assert_eq!(values(&c), [LEGACY], "{name}");
    }
}

#[test]
fn token_header_value_trimmed_and_untrimmed() {
    let c = single(&[("job-token", format!("{LEGACY}\t ").as_bytes())]);
    assert_eq!(values(&c), [format!("{LEGACY}\t ").as_str(), LEGACY]);
}

#[test]
fn blank_token_header_is_no_credential() {
    assert!(from_headers(&headers(&[("job-token", b"   ")])).is_empty());
    assert!(from_headers(&headers(&[("job-token", b"")])).is_empty());
}

/// Headers outside the token slots are skipped on their bytes unless they carry the marker,
/// in any case, wherever it sits (also beside bytes that are not UTF-8).
#[test]
fn marker_in_any_case_beside_invalid_utf8() {
    let map = headers(&[
        ("cookie", b"a=\xff\xfe; t=GlCbT-Abc_1"),
        ("x-job-tokens", b"plain"),
    ]);
    let creds = from_headers(&map);
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].slot, Slot::Header("cookie".into()));
    assert!(values(&creds[0]).contains(&"GlCbT-Abc_1"));
}

#[test]
fn unrelated_headers_are_not_credentials() {
    let map = headers(&[
        ("user-agent", b"curl/8.0"),
        ("cookie", b"_gitlab_session=abc"),
        ("accept", b"*/*"),
    ]);
    assert!(from_headers(&map).is_empty());
}

#[test]
fn authorization_schemes() {
    struct Case {
        value: Vec<u8>,
        dedicated: bool,
        must_have: Vec<String>,
    }
    let cases = vec![
        Case {
            value: format!("Bearer {LEGACY}").into_bytes(),
            dedicated: false,
            must_have: vec![format!("Bearer {LEGACY}"), LEGACY.into()],
        },
        Case {
            value: format!("bearer   {LEGACY}").into_bytes(),
            dedicated: false,
            // Doorkeeper strips exactly one space after `Bearer`.
            must_have: vec![LEGACY.into(), format!("  {LEGACY}")],
        },
        Case {
            value: format!("Token {LEGACY}").into_bytes(),
            dedicated: false,
            must_have: vec![LEGACY.into()],
        },
        Case {
            value: format!("Token token=\"{LEGACY}\", realm=x").into_bytes(),
            dedicated: false,
            must_have: vec![LEGACY.into()],
        },
        Case {
            value: format!("Bearer {LEGACY},foo=bar").into_bytes(),
            dedicated: false,
            must_have: vec![LEGACY.into()],
        },
        Case {
            value: LEGACY.as_bytes().to_vec(),
            dedicated: false,
            must_have: vec![LEGACY.into()],
        },
        Case {
            value: basic(&format!("gitlab-ci-token:{LEGACY}")),
            dedicated: true,
            must_have: vec![LEGACY.into()],
        },
        Case {
            value: basic(&format!("alice:{LEGACY}")),
            dedicated: false,
            must_have: vec![LEGACY.into()],
        },
        Case {
            value: format!(
                "BASIC {}",
                STANDARD.encode(format!("gitlab-ci-token:{LEGACY}"))
            )
            .into_bytes(),
            dedicated: true,
            must_have: vec![LEGACY.into()],
        },
        Case {
            // No colon: the whole decoded string.
            value: basic(LEGACY),
            dedicated: false,
            must_have: vec![LEGACY.into()],
        },
        Case {
            // `TokenLocator#http_basic_auth` decodes whatever the scheme.
            value: format!(
                "Bearer {}",
                STANDARD.encode(format!("gitlab-ci-token:{TOKEN}"))
            )
            .into_bytes(),
            dedicated: true,
            must_have: vec![TOKEN.into()],
        },
        Case {
            value: format!("Bearer ci:42:{TOKEN}").into_bytes(),
            dedicated: false,
            must_have: vec![format!("ci:42:{TOKEN}"), TOKEN.into()],
        },
        Case {
            value: format!("Basic   {}  ", STANDARD.encode(format!("u:{LEGACY}"))).into_bytes(),
            dedicated: false,
            must_have: vec![LEGACY.into()],
        },
    ];
    for case in cases {
        let c = single(&[("authorization", &case.value)]);
        let shown = String::from_utf8_lossy(&case.value).into_owned();
        assert_eq!(c.slot, Slot::Header("authorization".into()));
        assert_eq!(c.dedicated, case.dedicated, "{shown}");
        assert_eq!(values(&c)[0], shown, "whole value first");
        for want in &case.must_have {
            assert!(
                values(&c).contains(&want.as_str()),
                "{shown}: missing {want}"
            );
        }
    }
}

#[test]
fn basic_password_split_on_first_colon_only() {
    let c = single(&[(
        "authorization",
        &basic(&format!("gitlab-ci-token:{LEGACY}:x")),
    )]);
    assert!(values(&c).contains(&format!("{LEGACY}:x").as_str()));
    assert!(c.dedicated);
}

#[test]
fn basic_with_empty_password_is_not_dedicated() {
    let c = single(&[("authorization", &basic("gitlab-ci-token:"))]);
    assert!(!c.dedicated);
}

#[test]
fn basic_decoded_leniently_from_last_word_too() {
    // Rails decodes everything after the scheme; junk spaces and a second word are skipped.
    let enc = STANDARD.encode(format!("gitlab-ci-token:{LEGACY}"));
    let (a, b) = enc.split_at(8);
    let c = single(&[("authorization", format!("Basic {a} {b}").as_bytes())]);
    assert!(values(&c).contains(&LEGACY));
    assert!(c.dedicated);
}

#[test]
fn non_basic_garbage_decode_is_not_a_candidate() {
    // A PAT read as base64 gives bytes, not a token: no extra look-up for it.
    let c = single(&[("authorization", b"Bearer glpat-Zm9vOmJhcgAAAA")]);
    assert_eq!(
        values(&c),
        ["Bearer glpat-Zm9vOmJhcgAAAA", "glpat-Zm9vOmJhcgAAAA"]
    );
}

#[test]
fn ruby_decode64_matches_ruby() {
    let cases: &[(&str, &str)] = &[
        ("", ""),
        ("dXNlcjpwYXNz", "757365723a70617373"),
        ("dXNlcjpwYXM", "757365723a706173"),
        ("dXNlcjpwYQ", "757365723a7061"),
        ("=dXNlcjpwYXNz", "757365723a70617373"),
        ("==dXNlcjpwYXNz", "757365723a70617373"),
        ("dX=NlcjpwYXNz", "75"),
        ("d=XNlcjpwYXNz", "757365723a70617373"),
        ("dXN=lcjpwYXNz", "7573"),
        ("dXNl=cjpwYXNz", "757365723a70617373"),
        ("dXNlcjpwYXNz==", "757365723a70617373"),
        ("dXNl!!cjp-_wYXNz", "757365723a70617373"),
        ("dXNl cjpw\tYXNz", "757365723a70617373"),
        ("dXNlc", "757365"),
        ("Y", ""),
        ("YQ", "61"),
        ("YQ=", "61"),
        ("YQ==", "61"),
        ("YWI", "6162"),
        ("YWI=", "6162"),
        ("YWJj", "616263"),
        ("dXNlcjpwYXNz=ZXh0cmE=", "757365723a706173736578747261"),
        ("dXNlcg==cGFzcw==", "75736572"),
        ("////", "ffffff"),
        ("-_-_", ""),
        ("Zm9v\u{e9}YmFy", "666f6f626172"),
        ("Y=Q", "61"),
        ("YQ=X", "61"),
    ];
    for &(input, hex) in cases {
        let got: String = ruby_decode64(input.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, hex, "decode64({input:?})");
    }
}

#[test]
fn jwt_claims_become_candidates() {
    let wrapped = jwt(&format!(r#"{{"access_token":"{TOKEN}","user_id":7}}"#));
    let c = single(&[("authorization", format!("Bearer {wrapped}").as_bytes())]);
    assert!(values(&c).contains(&TOKEN));

    let terraform = jwt(&format!(r#"{{"token":"{LEGACY}","token":"second"}}"#));
    let c = single(&[("authorization", format!("Bearer {terraform}").as_bytes())]);
    assert!(values(&c).contains(&LEGACY));
    assert!(
        values(&c).contains(&"second"),
        "duplicate claims both count"
    );

    // Only string claims: a PAT id in `token` is an integer.
    let pat = jwt(r#"{"token":12345}"#);
    let c = single(&[("authorization", format!("Bearer {pat}").as_bytes())]);
    assert!(!values(&c).contains(&"12345"));
}

#[test]
fn jwt_with_padding_and_std_alphabet_is_read() {
    let payload = STANDARD.encode(format!(r#"{{"token":"{LEGACY}"}}"#));
    let token = format!("eyJhbGciOiJub25lIn0.{payload}.");
    assert_eq!(jwt_claims(&token), [LEGACY]);
    assert!(jwt_claims("a.b.c").is_empty());
    assert!(jwt_claims("not a jwt").is_empty());
    assert!(jwt_claims(&format!("{}.{}", "eyJhIjoxfQ", "eyJhIjoxfQ")).is_empty());
}

/// Found by the Rack oracle (tests/oracle.rs): the jwt gem splits with Ruby's `split('.')`,
/// which drops trailing empty segments, and decodes leniently, so a Terraform/Conan JWT with
/// a trailing `.` or junk in its signature still verifies at the forge.
#[test]
fn jwt_claims_read_as_the_jwt_gem_splits_and_decodes() {
    let wrapped = jwt(&format!(r#"{{"token":"{LEGACY}"}}"#));
    for spelling in [
        format!("{wrapped}."),
        format!("{wrapped}.."),
        format!(
            "{}!{}",
            &wrapped[..wrapped.len() - 4],
            &wrapped[wrapped.len() - 4..]
        ),
        format!("{wrapped} x"),
    ] {
        assert_eq!(jwt_claims(&spelling), [LEGACY], "{spelling}");
    }
    let creds = credentials_from_params(&[param("token", &format!("{wrapped}."))], Origin::Query);
    assert!(values(&creds[0]).contains(&LEGACY));
    assert!(
        jwt_claims(&format!("{wrapped}.x")).is_empty(),
        "four segments"
    );
}

/// Found by the Rack oracle: a job token in GitLab's JWT format verifies whatever junk its
/// signature segment carries (spaces, `", "` from a header given twice, a trailing `.`), and
/// such a value is never looked up as it is (the gate skips values with whitespace); its
/// clean spelling is a candidate.
#[test]
fn jwt_job_token_is_also_read_as_the_forge_verifies_it() {
    let sig = URL_SAFE_NO_PAD.encode([7u8; 256]);
    let head = format!(
        "glcbt-{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(r#"{"sub":"gid://gitlab/Ci::Build/1"}"#)
    );
    let clean = format!("{head}{sig}");
    assert_eq!(jwt_as_verified(&clean), None, "already clean");
    for spelling in [
        format!("{clean}."),
        format!("{head}{} {}", &sig[..20], &sig[20..]),
        format!("{head}{}!~{}", &sig[..20], &sig[20..]),
        format!("{head}{}=", sig),
    ] {
        assert_eq!(
            jwt_as_verified(&spelling).as_deref(),
            Some(clean.as_str()),
            "{spelling}"
        );
    }
    // With an instance prefix before `glcbt-`.
    let prefixed = format!("acme-{clean}.");
    assert_eq!(
        jwt_as_verified(&prefixed).as_deref(),
        Some(&prefixed[..prefixed.len() - 1])
    );
    // Not a JWT: no JSON in the header or the payload.
    assert_eq!(jwt_as_verified("abc.def.ghij."), None);

    let c = single(&[(
        "job-token",
        format!("{head}{} {}", &sig[..9], &sig[9..]).as_bytes(),
    )]);
    assert!(values(&c).contains(&clean.as_str()));
    // Split over two fields: Puma joins them with ", ", which the decoder skips.
    let creds = from_headers(&headers(&[
        ("job-token", format!("{head}{}", &sig[..100]).as_bytes()),
        ("job-token", &sig.as_bytes()[100..]),
    ]));
    assert!(creds.iter().any(|c| values(c).contains(&clean.as_str())));
}

/// Found by the Rack oracle: Puma joins `JOB-TOKEN`, `Job_Token` and `job-token` fields in
/// wire order, which a `HeaderMap` does not keep across spellings; every interleaving is
/// tried, and each spelling's fields alone (Puma 6.4.3+ drops the underscore ones).
#[test]
fn puma_joins_cover_every_interleaving_of_spellings() {
    let sig = URL_SAFE_NO_PAD.encode([3u8; 256]);
    let head = format!(
        "glcbt-{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
        URL_SAFE_NO_PAD.encode(r#"{"sub":"1"}"#)
    );
    let clean = format!("{head}{sig}");
    let (a, b, c) = (
        format!("{head}{}", &sig[..100]),
        sig[100..200].to_owned(),
        sig[200..].to_owned(),
    );
    let creds = from_headers(&headers(&[
        ("JOB-TOKEN", a.as_bytes()),
        ("Job_Token", b.as_bytes()),
        ("job-token", c.as_bytes()),
    ]));
    let all: Vec<&str> = creds.iter().flat_map(values).collect();
    assert!(all.contains(&clean.as_str()), "wire order A, B, C");
    assert!(
        all.contains(&format!("{a}, {c}").as_str()),
        "dashed fields alone"
    );
    assert!(creds.iter().all(|c| c.dedicated));

    // Many fields under two spellings: more joins than the gate looks up (it refuses those).
    let many: Vec<(String, String)> = (0..12)
        .map(|i| {
            let name = if i % 2 == 0 { "JOB-TOKEN" } else { "JOB_TOKEN" };
            (name.to_owned(), format!("v{i}"))
        })
        .collect();
    let pairs: Vec<(&str, &[u8])> = many
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let creds = from_headers(&headers(&pairs));
    let distinct: std::collections::BTreeSet<&str> = creds.iter().flat_map(values).collect();
    assert!(distinct.len() > crate::gate::MAX_CANDIDATES);
}

#[test]
fn jwt_in_basic_password_and_in_params() {
    let wrapped = jwt(&format!(r#"{{"access_token":"{TOKEN}"}}"#));
    let c = single(&[("authorization", &basic(&format!("user:{wrapped}")))]);
    assert!(values(&c).contains(&TOKEN));
    let creds = credentials_from_params(&[param("access_token", &wrapped)], Origin::Query);
    assert!(values(&creds[0]).contains(&TOKEN));
}

#[test]
fn agent_ci_form() {
    assert_eq!(agent_ci_token("ci:1:abc"), Some("abc"));
    assert_eq!(agent_ci_token("CI:123:a:b"), Some("a:b"));
    assert_eq!(agent_ci_token("ci::abc"), None);
    assert_eq!(agent_ci_token("ci:12:"), None);
    assert_eq!(agent_ci_token("ci:x:abc"), None);
    assert_eq!(agent_ci_token("c"), None);
    let creds = credentials_from_params(&[param("token", &format!("ci:9:{LEGACY}"))], Origin::Body);
    assert!(values(&creds[0]).contains(&LEGACY));
}

#[test]
fn job_token_marker_in_any_header() {
    let cookie = format!("_gitlab_session=abc; ci={TOKEN}; other=1");
    let c = single(&[("cookie", cookie.as_bytes())]);
    assert_eq!(c.slot, Slot::Header("cookie".into()));
    assert!(!c.dedicated);
    assert_eq!(values(&c), [cookie.as_str(), TOKEN]);

    let agent = format!("curl/8 (GLCBT-{LEGACY})");
    let c = single(&[("user-agent", agent.as_bytes())]);
    assert!(values(&c).contains(&format!("GLCBT-{LEGACY}").as_str()));

    // An instance prefix stays attached to the token.
    let prefixed = format!("x=acme-{TOKEN}.sig;");
    let c = single(&[("x-anything", prefixed.as_bytes())]);
    assert!(values(&c).contains(&format!("acme-{TOKEN}.sig").as_str()));
}

#[test]
fn marker_inside_dedicated_and_authorization_headers() {
    let c = single(&[("private-token", format!("junk {TOKEN} junk").as_bytes())]);
    assert!(values(&c).contains(&TOKEN));
    let c = single(&[("authorization", format!("Weird x,{TOKEN},y").as_bytes())]);
    assert!(values(&c).contains(&TOKEN));
}

#[test]
fn marker_substrings_are_linear_and_capped() {
    let many = "glcbt-a ".repeat(5000);
    let c = single(&[("cookie", many.as_bytes())]);
    assert!(c.candidates.len() <= MAX_CANDIDATES);
    assert_eq!(values(&c)[0], many);
    assert_eq!(
        marker_substrings("xglcbt-glcbt-abc"),
        ["xglcbt-glcbt-abc", "xglcbt-glcbt-abc"]
    );
    assert_eq!(marker_substrings("glcbt-"), Vec::<String>::new());
}

#[test]
fn non_utf8_header_values_are_read_lossily() {
    let mut raw = b"junk\xff\xfe ".to_vec();
    raw.extend_from_slice(TOKEN.as_bytes());
    let c = single(&[("x-custom", &raw)]);
    assert!(values(&c)[0].contains('\u{fffd}'));
    assert!(values(&c).contains(&TOKEN));
    let c = single(&[("job-token", b"\xfftok")]);
    assert_eq!(values(&c), ["\u{fffd}tok"]);
}

#[test]
fn candidates_are_distinct_and_ordered() {
    let c = single(&[("authorization", LEGACY.as_bytes())]);
    assert_eq!(values(&c), [LEGACY]);
    let c = single(&[("authorization", format!("Bearer {LEGACY}").as_bytes())]);
    let v = values(&c);
    assert_eq!(v[0], format!("Bearer {LEGACY}"));
    assert_eq!(v[1], LEGACY);
    let mut seen = v.clone();
    seen.dedup();
    assert_eq!(seen.len(), v.len());
}

#[test]
fn repeated_headers_also_yield_puma_joined_value() {
    let map = headers(&[
        ("job-token", b"glcbt-h.p.si"),
        ("job-token", b"g"),
        ("private-token", b"solo"),
    ]);
    let creds = from_headers(&map);
    assert_eq!(creds.len(), 4);
    let joined = creds
        .iter()
        .find(|c| values(c).contains(&"glcbt-h.p.si, g"))
        .expect("joined credential");
    assert!(joined.dedicated);
    assert_eq!(joined.slot, Slot::Header("job-token".into()));

    // `JOB-TOKEN` and `JOB_TOKEN` land in one env key: both orders are tried.
    let map = headers(&[("job-token", b"a1"), ("job_token", b"b2")]);
    let all: Vec<String> = from_headers(&map)
        .iter()
        .flat_map(|c| values(c).into_iter().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    assert!(all.contains(&"a1, b2".to_owned()));
    assert!(all.contains(&"b2, a1".to_owned()));
}

#[test]
fn debug_output_never_shows_tokens() {
    let map = headers(&[
        ("job-token", LEGACY.as_bytes()),
        ("authorization", &basic(&format!("gitlab-ci-token:{TOKEN}"))),
        ("cookie", format!("a={TOKEN}").as_bytes()),
    ]);
    let mut creds = from_headers(&map);
    creds.extend(credentials_from_params(
        &parse_query(&format!("private_token={LEGACY}&x={TOKEN}")),
        Origin::Query,
    ));
    let shown = format!("{creds:?} {creds:#?}");
    assert!(!shown.contains(LEGACY));
    assert!(!shown.contains(TOKEN));
    assert!(!shown.contains("glcbt"));
    assert!(shown.contains("[MASKED]"));
}

// --- is_known_non_job ------------------------------------------------------------------------

#[test]
fn known_non_job_prefixes() {
    let cases: &[(&str, &str, bool)] = &[
        ("glpat-abc", "", true),
        ("glptt-abc", "", true),
        ("gldt-abc", "", true),
        ("glrt-abc", "", true),
        ("gloas-abc", "", true),
        ("glsoat-abc", "", true),
        ("glft-abc", "", true),
        ("glimt-abc", "", true),
        ("glagent-abc", "", true),
        ("glcbt-abc", "", false),
        ("glpat-abcglcbt-x", "", false),
        ("glpat-abcGLCBT-x", "", false),
        (LEGACY, "", false),
        ("Bearer glpat-abc", "", false),
        ("GLPAT-abc", "", false),
        ("acme-glpat-abc", "", false),
        ("acme-glpat-abc", "acme-", true),
        ("acmeglpat-abc", "acme", true),
        ("acme-glpat-abc", "acme", true),
        ("acme-pat-abc", "acme-", true),
        ("acmedt-abc", "acme", true),
        ("acme-ft-abc", "acme", true),
        ("acme-glcbt-abc", "acme", false),
        ("acme-cbt-abc", "acme", false),
        ("other-glpat-abc", "acme", false),
        ("glpat-abc", "acme", true),
        ("", "", false),
    ];
    for &(candidate, prefix, want) in cases {
        assert_eq!(
            is_known_non_job(candidate, prefix),
            want,
            "{candidate} / {prefix}"
        );
    }
}

// --- parameters ------------------------------------------------------------------------------

#[test]
fn query_parsing_follows_rack() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("", &[]),
        ("a=1&b=2", &[("a", "1"), ("b", "2")]),
        ("a=1;b=2", &[("a", "1"), ("b", "2")]),
        ("a=1;  b=2&   c=3", &[("a", "1"), ("b", "2"), ("c", "3")]),
        (" a=1", &[(" a", "1")]),
        ("a=1&&;;b", &[("a", "1"), ("b", "")]),
        ("job%5Ftoken=x", &[("job_token", "x")]),
        (
            "job_token[]=x&job_token[]=y",
            &[("job_token[]", "x"), ("job_token[]", "y")],
        ),
        ("a+b=c+d%20e", &[("a b", "c d e")]),
        ("e=f=g", &[("e", "f=g")]),
        ("=v", &[("", "v")]),
        ("k=%zz%4&l=%", &[("k", "%zz%4"), ("l", "%")]),
        ("k=%E2%9C%93", &[("k", "\u{2713}")]),
        ("k=%FF", &[("k", "\u{fffd}")]),
        ("a=1&a=2", &[("a", "1"), ("a", "2")]),
    ];
    for &(raw, want) in cases {
        assert_eq!(pairs(&parse_query(raw)), want, "{raw:?}");
    }
}

#[test]
fn rack_base_names() {
    let cases: &[(&str, &str)] = &[
        ("job_token", "job_token"),
        ("job_token[]", "job_token"),
        ("job_token[x]", "job_token"),
        ("[job_token]", "job_token"),
        ("]]job_token]", "job_token"),
        ("job_token[", "job_token"),
        ("", ""),
        ("[]", ""),
    ];
    for &(name, base) in cases {
        assert_eq!(rack_base_name(name), base, "{name}");
    }
}

#[test]
fn token_parameters() {
    let cases: &[(&str, bool)] = &[
        ("job_token", true),
        ("job_token[]", true),
        ("[job_token]", true),
        ("job_token[x]", true),
        ("JOB_TOKEN", false),
        ("Job_Token[]", false),
        ("token", false),
        ("access_token", false),
        ("bearer_token", false),
        ("private_token", false),
        ("PRIVATE_TOKEN", false),
    ];
    for &(name, dedicated) in cases {
        let creds = credentials_from_params(&[param(name, LEGACY)], Origin::Query);
        assert_eq!(creds.len(), 1, "{name}");
        assert_eq!(creds[0].slot, Slot::Query(name.into()));
        assert_eq!(creds[0].dedicated, dedicated, "{name}");
        assert_eq!(values(&creds[0]), [LEGACY]);
    }
    let creds = credentials_from_params(&[param("token", LEGACY)], Origin::Body);
    assert_eq!(creds[0].slot, Slot::Body("token".into()));
}

#[test]
fn other_parameters_only_with_marker() {
    let params = [
        param("page", "2"),
        param("password", LEGACY),
        param("note", &format!("see {TOKEN} here")),
        param("private_token", ""),
        param("job_token", "  "),
    ];
    let creds = credentials_from_params(&params, Origin::Query);
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].slot, Slot::Query("note".into()));
    assert!(!creds[0].dedicated);
    assert!(values(&creds[0]).contains(&TOKEN));
}

#[test]
fn parameter_values_are_trimmed_too() {
    let creds = credentials_from_params(&parse_query("token=%20abc%0A"), Origin::Query);
    assert_eq!(values(&creds[0]), [" abc\n", "abc"]);
}

#[test]
fn single_value_agreement() {
    let params = [
        param("service", "git-upload-pack"),
        param("x", "1"),
        param("service", "git-upload-pack"),
    ];
    assert_eq!(
        single_value(&params, "service"),
        Ok(Some("git-upload-pack"))
    );
    assert_eq!(single_value(&params, "operation"), Ok(None));
    let params = [
        param("service", "git-upload-pack"),
        param("service", "git-receive-pack"),
    ];
    assert_eq!(single_value(&params, "service"), Err(()));
    let params = [
        param("service[]", "git-receive-pack"),
        param("service", "git-upload-pack"),
    ];
    assert_eq!(
        single_value(&params, "service"),
        Ok(Some("git-upload-pack"))
    );
}

// --- body kinds ------------------------------------------------------------------------------

#[test]
fn body_kinds() {
    let post = Method::POST;
    let get = Method::GET;
    let too_long = format!("multipart/form-data; boundary={}", "b".repeat(71));
    let cases: Vec<(&Method, Option<&str>, Result<BodyKind, ()>)> = vec![
        (&post, None, Ok(BodyKind::Untyped)),
        (&post, Some(""), Ok(BodyKind::Untyped)),
        (&get, None, Ok(BodyKind::Opaque)),
        (&Method::PUT, None, Ok(BodyKind::Opaque)),
        (
            &get,
            Some("application/x-www-form-urlencoded"),
            Ok(BodyKind::Form),
        ),
        (
            &post,
            Some("Application/X-WWW-Form-URLEncoded; charset=UTF-8"),
            Ok(BodyKind::Form),
        ),
        (
            &post,
            Some("application/x-www-form-urlencoded, text/plain"),
            Ok(BodyKind::Form),
        ),
        (&post, Some("application/json"), Ok(BodyKind::Json)),
        (
            &Method::PATCH,
            Some("APPLICATION/JSON; charset=utf-8"),
            Ok(BodyKind::Json),
        ),
        (
            &post,
            Some("application/vnd.git-lfs+json"),
            Ok(BodyKind::Json),
        ),
        (&post, Some("text/x-json"), Ok(BodyKind::Json)),
        (&post, Some("application/jsonrequest"), Ok(BodyKind::Json)),
        (
            &post,
            Some("application/vnd.docker.distribution.events.v1+json"),
            Ok(BodyKind::Json),
        ),
        (&get, Some("application/json"), Ok(BodyKind::Json)),
        (&post, Some("text/plain"), Ok(BodyKind::Opaque)),
        (
            &post,
            Some("application/x-git-upload-pack-request"),
            Ok(BodyKind::Opaque),
        ),
        (
            &post,
            Some("application/octet-stream"),
            Ok(BodyKind::Opaque),
        ),
        (
            &post,
            Some("multipart/form-data; boundary=----abc"),
            Ok(BodyKind::Multipart {
                boundary: "----abc".into(),
            }),
        ),
        (
            &Method::PUT,
            Some("Multipart/Related; type=x; boundary=\"q b\""),
            Ok(BodyKind::Multipart {
                boundary: "q b".into(),
            }),
        ),
        (
            &get,
            Some("multipart/mixed;BOUNDARY=X"),
            Ok(BodyKind::Multipart {
                boundary: "X".into(),
            }),
        ),
        (
            &post,
            Some("multipart/form-data; boundary=----WebKitFormBoundaryAbC"),
            Ok(BodyKind::Multipart {
                boundary: "----WebKitFormBoundaryAbC".into(),
            }),
        ),
        (&post, Some("multipart/form-data"), Err(())),
        (&post, Some("multipart/form-data; boundary="), Err(())),
        (&post, Some("multipart/form-data; boundary=\"\""), Err(())),
        (
            &post,
            Some("multipart/form-data; boundary=a; boundary=b"),
            Err(()),
        ),
        (
            &post,
            Some("multipart/form-data; xboundary=a; boundary=b"),
            Err(()),
        ),
        (&post, Some("multipart/form-data; boundary =a"), Err(())),
        (
            &post,
            Some("multipart/form-data; boundary=\"a;b\""),
            Err(()),
        ),
        (&post, Some("multipart/form-data; boundary=a ;x=y"), Err(())),
        (&post, Some(too_long.as_str()), Err(())),
    ];
    for (method, ct, want) in cases {
        let map = match ct {
            Some(ct) => headers(&[("content-type", ct.as_bytes())]),
            None => HeaderMap::new(),
        };
        assert_eq!(
            body_kind(method, &map).map_err(|_| ()),
            want,
            "{method} {ct:?}"
        );
    }
    let ok70 = format!("multipart/form-data; boundary={}", "b".repeat(70));
    assert!(body_kind(&post, &headers(&[("content-type", ok70.as_bytes())])).is_ok());
}

#[test]
fn body_kind_rejects_ambiguous_headers() {
    let two = headers(&[
        ("content-type", b"application/json"),
        ("content-type", b"text/plain"),
    ]);
    assert!(matches!(
        body_kind(&Method::POST, &two),
        Err(BodyError::ContentType(_))
    ));
    let non_ascii = headers(&[("content-type", b"application/json\xff")]);
    assert!(matches!(
        body_kind(&Method::POST, &non_ascii),
        Err(BodyError::ContentType(_))
    ));
    let gzip = headers(&[
        ("content-type", b"application/json"),
        ("content-encoding", b"gzip"),
    ]);
    assert!(matches!(
        body_kind(&Method::POST, &gzip),
        Err(BodyError::ContentType(_))
    ));
    let identity = headers(&[
        ("content-type", b"application/json"),
        ("content-encoding", b"identity"),
    ]);
    assert_eq!(body_kind(&Method::POST, &identity), Ok(BodyKind::Json));
    // Opaque bodies (a gzipped git pack) stream on.
    let pack = headers(&[
        ("content-type", b"application/x-git-upload-pack-request"),
        ("content-encoding", b"gzip"),
    ]);
    assert_eq!(body_kind(&Method::POST, &pack), Ok(BodyKind::Opaque));
}

// --- bodies ----------------------------------------------------------------------------------

fn parse(kind: &BodyKind, body: &[u8]) -> Result<Vec<Param>, BodyError> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(parse_body(kind, Bytes::copy_from_slice(body)))
}

#[test]
fn opaque_body_has_no_params() {
    assert_eq!(parse(&BodyKind::Opaque, b"job_token=x"), Ok(vec![]));
}

#[test]
fn form_body_follows_rack_post() {
    let got = parse(&BodyKind::Form, b"a=1;token=x&b=2&  c=%41+\0").expect("form");
    // Rack splits a form body on `&` only and drops one trailing NUL.
    assert_eq!(pairs(&got), [("a", "1;token=x"), ("b", "2"), ("c", "A ")]);
    let got = parse(&BodyKind::Form, b"job_token=\xfftok").expect("form");
    assert_eq!(pairs(&got), [("job_token", "\u{fffd}tok")]);
    assert_eq!(parse(&BodyKind::Form, b""), Ok(vec![]));
    let got = parse(&BodyKind::Form, format!("a=1;token={TOKEN}").as_bytes()).expect("form");
    let creds = credentials_from_params(&got, Origin::Body);
    assert_eq!(creds[0].slot, Slot::Body("a".into()));
    assert!(values(&creds[0]).contains(&TOKEN));
}

/// Found by the Rack oracle: Grape parses a POST body without a media type as JSON on the
/// endpoints whose default format is JSON, and merges an object into the params.
#[test]
fn untyped_post_body_is_read_as_a_form_and_as_json() {
    let got = parse(&BodyKind::Untyped, format!("job_token={LEGACY}").as_bytes()).expect("form");
    assert_eq!(pairs(&got), [("job_token", LEGACY)]);
    let body = format!(r#" {{"job_token":"{LEGACY}"}}"#);
    let got = parse(&BodyKind::Untyped, body.as_bytes()).expect("json");
    assert!(pairs(&got).contains(&("job_token", LEGACY)));
    // What Ruby's JSON parser could read as an object and serde cannot: refused.
    for body in [
        &br#"{"job_token":"x" /* c */}"#[..],
        b"/* c */ {\"job_token\":\"x\"}",
        b"\xEF\xBB\xBF{\"job_token\":\"x\"}",
        b"{job_token=x",
    ] {
        assert!(parse(&BodyKind::Untyped, body).is_err(), "{body:?}");
    }
    // Not JSON-like: a form only.
    assert_eq!(
        parse(&BodyKind::Untyped, b"[1]=x"),
        Ok(vec![param("[1]", "x")])
    );
    assert_eq!(parse(&BodyKind::Untyped, b""), Ok(vec![]));
}

#[test]
fn json_bodies_flatten_like_rails() {
    let body = br#"{"token":"a","n":1,"f":1.5,"t":true,"z":null,"token":"b",
        "obj":{"k":"v","deep":{"x":"y"},"arr":[1,"s"]},"list":["p",{"q":"r"},[2]]}"#;
    let got = parse(&BodyKind::Json, body).expect("json");
    assert_eq!(
        pairs(&got),
        [
            ("token", "a"),
            ("n", "1"),
            ("f", "1.5"),
            ("t", "true"),
            ("token", "b"),
            ("obj[k]", "v"),
            ("obj[deep][x]", "y"),
            ("obj[arr][]", "1"),
            ("obj[arr][]", "s"),
            ("list[]", "p"),
            ("list[][q]", "r"),
            ("list[][]", "2"),
        ]
    );
    let creds = credentials_from_params(&got, Origin::Body);
    assert_eq!(
        creds.len(),
        2,
        "both duplicate `token` keys are credentials"
    );
}

#[test]
fn json_non_object_top_level_is_json_param() {
    let cases: &[(&[u8], Pairs)] = &[
        (b"\"s\"", &[("_json", "s")]),
        (
            b"[\"a\",{\"k\":\"v\"}]",
            &[("_json[]", "a"), ("_json[][k]", "v")],
        ),
        (b"7", &[("_json", "7")]),
        (b"null", &[]),
        (b"", &[]),
        (b"{}", &[]),
        (b" {\"a\":\"\\u00e9\"} \n", &[("a", "\u{e9}")]),
    ];
    for &(body, want) in cases {
        assert_eq!(pairs(&parse(&BodyKind::Json, body).expect("json")), want);
    }
}

#[test]
fn json_errors_never_echo_the_body() {
    let bad: &[&[u8]] = &[
        br#"{"job_token":"SECRETVALUE""#,
        br#"{"job_token":"SECRETVALUE"} x"#,
        br#"{"job_token":SECRETVALUE}"#,
        b"   ",
    ];
    for body in bad {
        match parse(&BodyKind::Json, body) {
            Err(BodyError::Json(msg)) => assert!(!msg.contains("SECRET"), "{msg}"),
            other => panic!("expected a JSON error, got {other:?}"),
        }
    }
    assert_eq!(
        parse(&BodyKind::Json, b"{\"a\":\"\xff\"}"),
        Err(BodyError::Utf8)
    );
}

fn multipart(boundary: &str) -> BodyKind {
    BodyKind::Multipart {
        boundary: boundary.to_owned(),
    }
}

#[test]
fn multipart_fields_and_files() {
    let body = format!(
        "--B\r\nContent-Disposition: form-data; name=\"job_token\"\r\n\r\n{LEGACY}\r\n\
         --B\r\nContent-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json\r\n\r\n{{\"a\":1}}\r\n\
         --B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.zip\"\r\nContent-Type: application/zip\r\n\r\n{TOKEN}\r\n\
         --B\r\nContent-Disposition: form-data; name=\"up\"; filename*=UTF-8''x.txt\r\n\r\nfile2\r\n\
         --B--\r\nepilogue"
    );
    let got = parse(&multipart("B"), body.as_bytes()).expect("multipart");
    assert_eq!(pairs(&got), [("job_token", LEGACY), ("meta", "{\"a\":1}")]);
}

#[test]
fn multipart_edge_cases_read_as_rack_does() {
    // (body, Rack 2.2.22's string params; None where scopegate refuses the ambiguity)
    let cases: &[(&str, Option<Pairs>)] = &[
        // A preamble is allowed.
        ("preamble\r\n--B\r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n--B--", Some(&[("a", "v")])),
        // Rack ignores a filename written in upper case: the part is a field.
        ("--B\r\nContent-Disposition: form-data; name=\"job_token\"; FILENAME=\"f\"\r\n\r\nTOK\r\n--B--\r\n", Some(&[("job_token", "TOK")])),
        // `filename=""`: Rack drops the part.
        ("--B\r\nContent-Disposition: form-data; name=\"job_token\"; filename=\"\"\r\n\r\nTOK\r\n--B--\r\n", Some(&[])),
        // `filename*` without charset quotes gives Rack no name: a field.
        ("--B\r\nContent-Disposition: form-data; name=\"a\"; filename*=x.txt\r\n\r\nv\r\n--B--\r\n", Some(&[("a", "v")])),
        // A quote opened in another header swallows the filename for Rack: a field.
        ("--B\r\nX-Foo: ; a=\"\r\nContent-Disposition: form-data; name=job_token; filename=f; x=\"y\"\r\n\r\nTOK\r\n--B--\r\n", Some(&[("job_token", "TOK")])),
        // A filename in another header counts for Rack (and multer sees none): no string param.
        ("--B\r\nContent-Type: text/plain; filename=zz\r\nContent-Disposition: form-data; name=job_token\r\n\r\nTOK\r\n--B--\r\n", Some(&[])),
        // A close delimiter first: multer stops, Rack goes on to read the part.
        ("--B--\r\nContent-Disposition: form-data; name=\"job_token\"\r\n\r\nTOK\r\n--B--\r\n", None),
        // Two names: multer takes the first, Rack the last.
        ("--B\r\nContent-Disposition: form-data; name=\"a\"; name=\"job_token\"\r\n\r\nTOK\r\n--B--\r\n", None),
        // Rack's name regex is not anchored to the header name.
        ("--B\r\nX-Content-Disposition: form-data; name=\"job_token\"\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nTOK\r\n--B--\r\n", None),
        // Rack ends a part at a delimiter without CRLF before it.
        ("--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nabc--B\r\nContent-Disposition: form-data; name=\"job_token\"\r\n\r\nTOK\r\n--B--\r\n", None),
        // Transport padding after a delimiter.
        ("--B  \r\nContent-Disposition: form-data; name=\"job_token\"\r\n\r\nTOK\r\n--B--\r\n", None),
        // Boundary string in the epilogue.
        ("--B\r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n--B--\r\n--B\r\n", None),
        // No closing delimiter.
        ("--B\r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n", None),
        // A part without a name (Rack would name it after Content-ID or its type).
        ("--B\r\nContent-ID: job_token\r\n\r\nTOK\r\n--B--\r\n", None),
        // Names that unquote differently.
        ("--B\r\nContent-Disposition: form-data; name=a\\_b\r\n\r\nv\r\n--B--\r\n", None),
        // An obsolete folded header line (Rack unfolds it; multer refuses it).
        ("--B\r\nContent-Disposition: form-data;\r\n name=\"job_token\"\r\n\r\nTOK\r\n--B--\r\n", None),
        // Not multipart at all.
        ("job_token=TOK", None),
        ("", None),
    ];
    for &(body, want) in cases {
        let got = parse(&multipart("B"), body.as_bytes());
        match want {
            Some(want) => assert_eq!(pairs(&got.expect(body)), want, "{body:?}"),
            None => assert!(
                matches!(got, Err(BodyError::Multipart(_))),
                "{body:?} gave {got:?}"
            ),
        }
    }
}

#[test]
fn multipart_empty_form() {
    assert_eq!(parse(&multipart("B"), b"--B--\r\n"), Ok(vec![]));
}

#[test]
fn multipart_errors_never_echo_the_body() {
    let bodies = [
        format!("--B\r\nContent-Disposition: form-data; name=\"{TOKEN}\"\r\n\r\nv\r\n"),
        format!(
            "--B\r\nContent-Disposition: form-data; name=\"a\"; name=\"{TOKEN}\"\r\n\r\nv\r\n--B--"
        ),
        format!("--B\r\n{TOKEN}: x\r\nbad header\r\n\r\nv\r\n--B--"),
    ];
    for body in bodies {
        match parse(&multipart("B"), body.as_bytes()) {
            Err(e @ BodyError::Multipart(_)) => {
                let msg = format!("{e} {e:?}");
                assert!(!msg.contains("glcbt"), "{msg}");
            }
            other => panic!("expected a multipart error, got {other:?}"),
        }
    }
}

#[test]
fn multipart_field_with_marker_is_a_credential() {
    let body = format!(
        "--X\r\nContent-Disposition: form-data; name=\"description\"\r\n\r\nuse {TOKEN}\r\n--X--\r\n"
    );
    let got = parse(&multipart("X"), body.as_bytes()).expect("multipart");
    let creds = credentials_from_params(&got, Origin::Body);
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].slot, Slot::Body("description".into()));
    assert!(values(&creds[0]).contains(&TOKEN));
}

#[test]
fn rack_value_quoting() {
    let end = |s: &str| rack_value(s.as_bytes(), 0);
    assert_eq!(end("\"a\\\"b\"c"), Some(6));
    assert_eq!(end("\"a\\\"b"), Some(4));
    assert_eq!(end("\"\\\\\"x\""), Some(6));
    assert_eq!(end("\"abc"), None);
    assert_eq!(end("abc;d"), Some(3));
    assert_eq!(end(";"), None);
    assert_eq!(rack_dequote(b"\"a\\\"b\""), "a\"b");
    assert_eq!(rack_dequote(b"plain"), "plain");
}

#[test]
fn pathological_marker_header_stays_cheap() {
    let value = "glcbt-a.".repeat(8 * 1024);
    let started = std::time::Instant::now();
    let creds = from_headers(&headers(&[
        ("cookie", value.as_bytes()),
        ("job-token", value.as_bytes()),
    ]));
    assert_eq!(creds.len(), 2);
    assert!(creds.iter().all(|c| c.candidates.len() <= MAX_CANDIDATES));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn touching_delimiters_are_an_error_not_a_panic() {
    let heads = part_heads(b"--B\r\n--B--", "B", 1);
    assert!(matches!(heads, Err(BodyError::Multipart(_))));
    for body in [
        &b"--B\r\n--B--"[..],
        b"--B\r\n\r\n--B--",
        b"--B\r\n--B\r\n--B--",
        b"--B",
    ] {
        assert!(matches!(
            parse(&multipart("B"), body),
            Err(BodyError::Multipart(_))
        ));
    }
}

/// A small xorshift generator: the mutation tests need variety, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn mutated_inputs_never_panic() {
    let seed = format!(
        "--B\r\nContent-Disposition: form-data; name=\"job_token\"; filename=\"f\"\r\n\
         Content-Type: text/plain\r\n\r\n{TOKEN}\r\n--B\r\nContent-Disposition: form-data; \
         name=a\r\n\r\nv\r\n--B--\r\n"
    );
    let alphabet = b"-B\r\n\";:=*'%\\ \tname filename glcbt-0aZ\xff";
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        let mut body = seed.as_bytes().to_vec();
        for _ in 0..=rng.below(6) {
            let at = rng.below(body.len() + 1);
            match rng.below(3) {
                0 => body.insert(at, alphabet[rng.below(alphabet.len())]),
                1 if at < body.len() => {
                    body.remove(at);
                }
                _ => body.truncate(at),
            }
        }
        let _ = parse(&multipart("B"), &body);
        let _ = parse(&BodyKind::Form, &body);
        let _ = parse(&BodyKind::Json, &body);
        let text = String::from_utf8_lossy(&body);
        let _ = credentials_from_params(&parse_query(&text), Origin::Query);
        let _ = jwt_claims(&text);
        let _ = is_known_non_job(&text, "acme-");
        if let Ok(value) = HeaderValue::from_bytes(&body) {
            let mut map = HeaderMap::new();
            map.append("authorization", value.clone());
            map.append("authorization", value.clone());
            map.append("cookie", value.clone());
            map.append("content-type", value);
            let _ = from_headers(&map);
            let _ = body_kind(&Method::POST, &map);
        }
    }
}

#[test]
fn multipart_as_curl_sends_it() {
    let boundary = "------------------------d74496d66958873e";
    let ct = format!("multipart/form-data; boundary={boundary}");
    let kind = body_kind(&Method::POST, &headers(&[("content-type", ct.as_bytes())]))
        .expect("curl content type");
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"token\"\r\n\r\n{LEGACY}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"ref\"\r\n\r\nmain\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"pkg.tgz\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n\x1f\u{8b}binary\r\n\
         --{boundary}--\r\n"
    );
    let got = parse(&kind, body.as_bytes()).expect("multipart");
    assert_eq!(pairs(&got), [("token", LEGACY), ("ref", "main")]);
    let creds = credentials_from_params(&got, Origin::Body);
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].slot, Slot::Body("token".into()));
}

#[test]
fn the_marker_is_found_where_a_lower_cased_search_finds_it() {
    for s in [
        "",
        "g",
        "glcbt",
        "glcbt-",
        "GLCBT-x",
        "xxGlCbT-yy",
        "gglcbt-",
        "glcbglcbt-",
        "glcbt-glcbt-",
        "ün glcbt- ü GLCBT-",
        "a;GLCBT_;glcbt -;gLcBt-",
        "gggggggggglcbt-",
    ] {
        let lower = s.to_ascii_lowercase();
        for from in 0..=s.len() {
            let want = lower
                .get(from..)
                .and_then(|rest| rest.find(JOB_TOKEN_MARKER))
                .map(|at| at + from);
            if lower.is_char_boundary(from) {
                assert_eq!(find_marker(s.as_bytes(), from), want, "{s:?} from {from}");
            }
        }
        assert_eq!(
            contains_marker(s),
            lower.contains(JOB_TOKEN_MARKER),
            "{s:?}"
        );
    }
}
