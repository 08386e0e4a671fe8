//! What one Check costs inside tollgate, without the network: a whole `Gate::check` for a
//! cached key (credential extraction, checksum, SHA-256, cache hit, policy, response), for
//! a session token (HS256 verification, cached user), and the parts; and reading a Check
//! off the wire as envoy-types' `CheckRequest` against tollgate's lean [`Check`], side by
//! side. Run with `cargo bench --bench decision`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use std::sync::Arc;
use tollgate::app::App;
use tollgate::authn::api_key;
use tollgate::authz::body::model_field;
use tollgate::authz::wire::Check;
use tollgate::config::Config;
use tollgate::decision::{self, ModelField, Policy, Principal};
use tollgate::secret::Secret;
use tollgate::store::sql::{ConnectOptions, SqlStore};
use tollgate::store::{Actor, KeyStore, NewKey, NewUser, Store, UserStore};

/// A Check as the gRPC server reads it off the wire ([`Check`]), built once.
fn check_request(key: &str, body: &[u8]) -> Check {
    let headers = [
        ("authorization", format!("Bearer {key}")),
        ("content-type", "application/json".to_owned()),
        (
            "x-request-id",
            "4c1ad6b4-6bb3-4f7d-9b07-2f3b8a1c0d55".to_owned(),
        ),
        (":authority", "llm.internal".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Check::from(&CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: "/v1/chat/completions".into(),
                    headers,
                    raw_body: body.to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    })
}

const BODY: &[u8] = br#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Summarise the plot of Hamlet in one sentence."}],"max_tokens":64,"temperature":0.2}"#;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let (app, redis_app, key, limited, budgeted, session_token) = rt.block_on(async {
        let store = SqlStore::connect(&url, &ConnectOptions::default())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let plain = api_key::generate();
        store
            .create_key(
                &Actor::new("bench", None),
                NewKey {
                    name: "bench".into(),
                    key_hash: plain.hash().to_hex(),
                    key_hint: plain.hint(),
                    models: vec!["gpt-4o-mini".into()],
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
        let user = store
            .create_user(
                &Actor::new("bench", None),
                NewUser {
                    username: "ada".into(),
                    email: "ada@example.com".into(),
                    ..NewUser::default()
                },
            )
            .await
            .unwrap();
        let limited = api_key::generate();
        store
            .create_key(
                &Actor::new("bench", None),
                NewKey {
                    name: "bench-limited".into(),
                    key_hash: limited.hash().to_hex(),
                    key_hint: limited.hint(),
                    limits: tollgate::domain::Limits {
                        rpm: Some(1_000_000_000),
                        tpm: Some(1_000_000_000_000),
                        ..Default::default()
                    },
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
        // Rate limits and a budget: one more step in memory, the same one script in Redis.
        let budgeted = api_key::generate();
        store
            .create_key(
                &Actor::new("bench", None),
                NewKey {
                    name: "bench-budgeted".into(),
                    key_hash: budgeted.hash().to_hex(),
                    key_hint: budgeted.hint(),
                    limits: tollgate::domain::Limits {
                        rpm: Some(1_000_000_000),
                        tpm: Some(1_000_000_000_000),
                        max_budget: Some(1e12),
                        ..Default::default()
                    },
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
        let config = Config::parse_str(
            "bench.yaml",
            "auth:\n  session: { secret: bench-secret-bench-secret-bench-secret-0123 }\n",
            &|_| None,
        )
        .unwrap()
        .config;
        let app = App::with_store(config, &Secret::new("master"), Arc::new(store));
        let sessions = app.sessions.as_ref().expect("auth.session is set");
        let (token, _) = sessions
            .keys()
            .issue(&user, "bench-session", tollgate::domain::now());
        let redis_yaml = format!(
            "redis: {{ url: \"redis://127.0.0.1:6379\", failure_mode: closed, key_prefix: \"bench:{}:\" }}\n",
            std::process::id()
        );
        let redis_config = Config::parse_str("bench.yaml", &redis_yaml, &|_| None)
            .unwrap()
            .config;
        let redis_app = App::with_parts(
            redis_config,
            &Secret::new("master"),
            app.store.clone(),
            tollgate::clock::Clock::System,
        )
        .unwrap();
        (
            app,
            redis_app,
            plain.into_string(),
            limited.into_string(),
            budgeted.into_string(),
            token.expose().to_owned(),
        )
    });
    let gate = app.gate.clone();
    let request = check_request(&key, BODY);
    // Warm the cache: the benchmark is of the cached decision, which does no I/O.
    let warm = rt.block_on(gate.answer(&request)).unwrap();
    assert_eq!(
        warm.status.unwrap().code,
        0,
        "the bench key must be allowed"
    );

    c.bench_function("check/cached_key_allowed", |b| {
        b.to_async(&rt).iter(|| gate.answer(&request))
    });
    // The same cached key with rpm and tpm limits: one in-memory bucket admit more.
    let with_limits = check_request(&limited, BODY);
    let warm = rt.block_on(gate.answer(&with_limits)).unwrap();
    assert_eq!(
        warm.status.unwrap().code,
        0,
        "the limited key must be allowed"
    );
    c.bench_function("check/cached_key_memory_limits", |b| {
        b.to_async(&rt).iter(|| gate.answer(&with_limits))
    });
    // And with the buckets in Redis (one EVALSHA per decision), when a Redis answers.
    let redis_gate = redis_app.gate.clone();
    let warm = rt.block_on(redis_gate.answer(&with_limits)).unwrap();
    if warm.status.is_some_and(|s| s.code == 0) {
        c.bench_function("check/cached_key_redis_limits", |b| {
            b.to_async(&rt).iter(|| redis_gate.answer(&with_limits))
        });
    } else {
        eprintln!("no Redis on 127.0.0.1:6379: skipping check/cached_key_redis_limits");
    }
    // Rate limits and a budget together: in memory, and in Redis (still one EVALSHA).
    let with_budget = check_request(&budgeted, BODY);
    let warm = rt.block_on(gate.answer(&with_budget)).unwrap();
    assert_eq!(
        warm.status.unwrap().code,
        0,
        "the budgeted key must be allowed"
    );
    c.bench_function("check/cached_key_memory_limits_and_budget", |b| {
        b.to_async(&rt).iter(|| gate.answer(&with_budget))
    });
    let warm = rt.block_on(redis_gate.answer(&with_budget)).unwrap();
    if warm.status.is_some_and(|s| s.code == 0) {
        c.bench_function("check/cached_key_redis_limits_and_budget", |b| {
            b.to_async(&rt).iter(|| redis_gate.answer(&with_budget))
        });
    }
    let session = check_request(&session_token, BODY);
    let warm = rt.block_on(gate.answer(&session)).unwrap();
    assert_eq!(
        warm.status.unwrap().code,
        0,
        "the session token must be allowed"
    );
    c.bench_function("check/cached_session_token_allowed", |b| {
        b.to_async(&rt).iter(|| gate.answer(&session))
    });
    let denied = check_request(key.replace("sk-tg-", "sk-tg-X").split_at(55).0, BODY);
    c.bench_function("check/bad_checksum_denied", |b| {
        b.to_async(&rt).iter(|| gate.answer(&denied))
    });

    c.bench_function("parts/key_validate_and_hash", |b| {
        b.iter(|| api_key::parse(&key).unwrap().hash())
    });
    c.bench_function("parts/model_from_body", |b| {
        b.iter(|| model_field(BODY, false))
    });
    // A 1 MiB prompt: read whole (UTF-8 check + one pass), and as the prefix of a cut body
    // (the top-level scanner that ext_proc also runs over the rest).
    let long = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}],"max_tokens":64}}"#,
        "lorem ipsum ".repeat(87_000)
    );
    c.bench_function("parts/model_from_body_1mib_whole", |b| {
        b.iter(|| model_field(long.as_bytes(), false))
    });
    c.bench_function("parts/model_from_body_1mib_cut", |b| {
        b.iter(|| model_field(long.as_bytes(), true))
    });
    // A 40-chunk chat stream: metering it, and taking out the usage tollgate asked for.
    let mut stream = String::new();
    for i in 0..40 {
        stream.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"word{i} \"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ));
    }
    stream.push_str("data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":40,\"total_tokens\":49}}\n\ndata: [DONE]\n\n");
    let pieces: Vec<&[u8]> = stream.split_inclusive("\n\n").map(str::as_bytes).collect();
    c.bench_function("parts/stream_metered", |b| {
        b.iter(|| {
            let mut parser = tollgate::usage::sse::SseUsage::default();
            for piece in &pieces {
                parser.feed(piece);
            }
            parser.finish()
        })
    });
    c.bench_function("parts/stream_unasked_usage_taken_out", |b| {
        b.iter(|| {
            let mut filter = tollgate::usage::unasked::UnaskedUsage::default();
            let last = pieces.len() - 1;
            pieces
                .iter()
                .enumerate()
                .map(|(i, piece)| filter.filter(piece, i == last).map_or(0, |o| o.len()))
                .sum::<usize>()
        })
    });
    let policy = Policy::from_config(&Config::default());
    let rule = decision::route(&policy, "POST", "/v1/chat/completions")
        .unwrap()
        .clone();
    let lookup = rt
        .block_on(app.auth.keys.resolve(&api_key::parse(&key).unwrap().hash()))
        .unwrap()
        .unwrap();
    let principal = Principal::Key(lookup);
    let model = ModelField::Named("gpt-4o-mini".into());
    c.bench_function("parts/authorize_pure", |b| {
        b.iter(|| decision::authorize(&policy, &rule, &principal, &model, 1_800_000_000).unwrap())
    });
    c.bench_function("parts/render_allowed_response", |b| {
        let grant = decision::authorize(&policy, &rule, &principal, &model, 1_800_000_000).unwrap();
        b.iter_batched(
            || grant.clone(),
            |g| tollgate::authz::response::allowed(&g),
            BatchSize::SmallInput,
        )
    });
}

/// The same Check bytes decoded both ways: what Envoy sends for an OpenAI SDK request (its
/// usual headers, the peer, a 200-byte body).
fn decode(c: &mut Criterion) {
    use envoy_types::pb::envoy::config::core::v3::{address, Address, SocketAddress};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
    use prost::Message;
    let headers = [
        (":authority", "llm.internal"),
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        (":scheme", "http"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate"),
        (
            "authorization",
            "Bearer sk-tg-0123456789abcdef0123456789abcdef0123456789ab",
        ),
        ("content-length", "178"),
        ("content-type", "application/json"),
        ("user-agent", "OpenAI/Python 1.99.0"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "4c1ad6b4-6bb3-4f7d-9b07-2f3b8a1c0d55"),
        ("x-stainless-arch", "x64"),
        ("x-stainless-async", "false"),
        ("x-stainless-lang", "python"),
        ("x-stainless-os", "Linux"),
        ("x-stainless-package-version", "1.99.0"),
        ("x-stainless-retry-count", "0"),
        ("x-stainless-runtime", "CPython"),
        ("x-stainless-runtime-version", "3.11.7"),
    ];
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "10.0.0.7".into(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    id: "1234567890".into(),
                    method: "POST".into(),
                    path: "/v1/chat/completions".into(),
                    host: "llm.internal".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    raw_body: BODY.to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let wire = bytes::Bytes::from(request.encode_to_vec());
    c.bench_function("wire/decode_envoy_types_check_request", |b| {
        b.iter(|| CheckRequest::decode(wire.clone()).unwrap())
    });
    c.bench_function("wire/decode_lean_check", |b| {
        b.iter(|| Check::decode(wire.clone()).unwrap())
    });
}

criterion_group!(benches, bench, decode);
criterion_main!(benches);
