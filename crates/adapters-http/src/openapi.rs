//! The OpenAPI 3.1 description of the HTTP API, generated from the handlers' `#[utoipa::path]`
//! annotations, and the table that registers every handler at the method and path its
//! annotation documents, so that what is served and what is described cannot part ways.

use actix_web::{http::Method, web, FromRequest, Handler, Responder, Route};
use utoipa::{
    openapi::{
        link::LinkBuilder,
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
        HttpMethod, RefOr,
    },
    Modify, OpenApi,
};

use crate::{
    auth::TOKEN_COOKIE,
    ops,
    problem::Problem,
    routes::{accounts, balance, events, orders},
    schemas::{Internal, PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable},
};

/// The name of the bearer-token security scheme.
pub const BEARER_SCHEME: &str = "bearer";
/// The name of the session-cookie security scheme.
pub const COOKIE_SCHEME: &str = "cookie";

/// The API description. [`openapi`] builds it.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Gophermart",
        description = "A loyalty-points service. Customers register, hand in the numbers of the \
            orders they bought, are credited the points the accrual system computes for each, and \
            spend points on new orders. One point is worth one rouble; amounts are exact JSON \
            numbers with at most two decimal places.\n\n\
            **Authentication**: register or sign in, then send the token back either as \
            `Authorization: Bearer <token>` or in the `token` cookie (a browser does the latter by \
            itself).\n\n\
            **Errors** are `application/problem+json` bodies (RFC 9457). Request bodies may be \
            gzip-compressed (`Content-Encoding: gzip`), answers are compressed on \
            `Accept-Encoding`; bodies larger than 64 KiB are refused with 413.",
        license(name = "MIT")
    ),
    paths(
        accounts::register,
        accounts::log_in,
        orders::upload,
        orders::list,
        balance::balance,
        balance::withdraw,
        balance::withdrawals,
        events::events,
        ops::healthz,
        ops::readyz,
        ops::metrics,
    ),
    components(
        schemas(Problem),
        responses(Unauthorized, TooManyRequests, PayloadTooLarge, Internal, Unavailable)
    ),
    modifiers(&SecuritySchemes, &Links),
    tags(
        (name = "accounts", description = "Registration and sign-in."),
        (name = "orders", description = "Order numbers handed in for points."),
        (name = "balance", description = "Points: the balance, spending them, past spending."),
        (name = "events", description = "Changes as they happen, as Server-Sent Events."),
        (name = "operations", description = "Health, readiness and metrics for operators."),
    )
)]
pub struct ApiDoc;

/// The API description as served at `/api/openapi.json`.
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Adds the two ways of presenting the session token.
#[derive(Debug)]
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "The token from the `Authorization` header of the register or login answer.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            COOKIE_SCHEME,
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                TOKEN_COOKIE,
                "The session cookie set by the register or login answer (HttpOnly, SameSite=Strict).",
            ))),
        );
    }
}

/// The operations a customer's token opens, by operation id.
const SIGNED_IN_OPERATIONS: [&str; 6] = [
    "upload_order",
    "list_orders",
    "balance",
    "withdraw",
    "list_withdrawals",
    "events",
];

/// Where an answer leads (OpenAPI links), so that clients and stateful tests can chain calls:
/// registering or signing in hands out the token every customer operation takes; an upload is
/// then in the list and can be sent again; a withdrawal is then in the list, shows in the
/// balance, and sending it again is refused as a reused order number.
#[derive(Debug)]
struct Links;

/// `(operation, status, link name, target operation, parameters, request body)`.
type LinkSpec = (
    &'static str,
    &'static str,
    String,
    &'static str,
    Vec<(&'static str, &'static str)>,
    Option<&'static str>,
);

fn link_table() -> Vec<LinkSpec> {
    let token = ("header.Authorization", "$response.header.Authorization");
    let mut table: Vec<LinkSpec> = Vec::new();
    for source in ["register", "login"] {
        for target in SIGNED_IN_OPERATIONS {
            table.push((source, "200", target.to_owned(), target, vec![token], None));
        }
    }
    table.extend([
        (
            "register",
            "200",
            "login".to_owned(),
            "login",
            vec![],
            Some("$request.body"),
        ),
        (
            "upload_order",
            "202",
            "list_orders".to_owned(),
            "list_orders",
            vec![],
            None,
        ),
        (
            "upload_order",
            "202",
            "upload_again".to_owned(),
            "upload_order",
            vec![],
            Some("$request.body"),
        ),
        (
            "withdraw",
            "200",
            "list_withdrawals".to_owned(),
            "list_withdrawals",
            vec![],
            None,
        ),
        (
            "withdraw",
            "200",
            "balance".to_owned(),
            "balance",
            vec![],
            None,
        ),
        (
            "withdraw",
            "200",
            "withdraw_again".to_owned(),
            "withdraw",
            vec![],
            Some("$request.body"),
        ),
    ]);
    table
}

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (source, status, name, target, parameters, body) in link_table() {
            let operation = openapi
                .paths
                .paths
                .values_mut()
                .flat_map(|item| {
                    [
                        item.get.as_mut(),
                        item.post.as_mut(),
                        item.put.as_mut(),
                        item.delete.as_mut(),
                        item.patch.as_mut(),
                    ]
                })
                .flatten()
                .find(|operation| operation.operation_id.as_deref() == Some(source));
            let Some(RefOr::T(response)) =
                operation.and_then(|operation| operation.responses.responses.get_mut(status))
            else {
                continue;
            };
            let link = parameters
                .into_iter()
                .fold(
                    LinkBuilder::new().operation_id(target),
                    |link, (parameter, value)| link.parameter(parameter, value),
                )
                .request_body(body)
                .build();
            response.links.insert(name, RefOr::T(link));
        }
    }
}

/// A documented operation and the route that serves it.
pub(crate) struct Endpoint {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) route: Route,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

fn actix_method(method: &HttpMethod) -> Method {
    match method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Options => Method::OPTIONS,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Trace => Method::TRACE,
    }
}

/// `handler` served at each method and the path that the annotation `P` documents.
fn served<P, F, Args>(handler: F) -> Vec<Endpoint>
where
    P: utoipa::Path,
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    P::methods()
        .iter()
        .map(|method| {
            let method = actix_method(method);
            Endpoint {
                route: web::method(method.clone()).to(handler.clone()),
                method,
                path: P::path(),
            }
        })
        .collect()
}

/// Every documented operation with its handler. Each pairs a handler with its own annotation
/// (`__path_<handler>`, generated by `#[utoipa::path]`), which supplies the method and path.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    [
        served::<accounts::__path_register, _, _>(accounts::register),
        served::<accounts::__path_log_in, _, _>(accounts::log_in),
        served::<orders::__path_upload, _, _>(orders::upload),
        served::<orders::__path_list, _, _>(orders::list),
        served::<balance::__path_balance, _, _>(balance::balance),
        served::<balance::__path_withdraw, _, _>(balance::withdraw),
        served::<balance::__path_withdrawals, _, _>(balance::withdrawals),
        served::<events::__path_events, _, _>(events::events),
        served::<ops::__path_healthz, _, _>(ops::healthz),
        served::<ops::__path_readyz, _, _>(ops::readyz),
        served::<ops::__path_metrics, _, _>(ops::metrics),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Registers every documented operation, one resource per path, so that a path served for
/// some methods answers 405 to the others.
pub(crate) fn register_endpoints(cfg: &mut web::ServiceConfig) {
    let mut by_path: Vec<(String, Vec<Route>)> = Vec::new();
    for endpoint in endpoints() {
        match by_path.iter_mut().find(|(path, _)| *path == endpoint.path) {
            Some((_, routes)) => routes.push(endpoint.route),
            None => by_path.push((endpoint.path, vec![endpoint.route])),
        }
    }
    for (path, routes) in by_path {
        let resource = routes
            .into_iter()
            .fold(web::resource(path), |resource, route| resource.route(route));
        cfg.service(resource);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use actix_web::{http::StatusCode, test as actix_test, App};
    use serde_json::Value;

    use super::*;
    use crate::configure_api;

    fn document() -> Value {
        serde_json::to_value(openapi()).expect("the document serializes")
    }

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    /// `(METHOD, path)` of every operation in the document.
    fn documented(document: &Value) -> BTreeSet<(String, String)> {
        let paths = document["paths"].as_object().expect("paths");
        paths
            .iter()
            .flat_map(|(path, item)| {
                let item = item.as_object().expect("a path item");
                METHODS
                    .iter()
                    .filter(|method| item.contains_key(**method))
                    .map(|method| (method.to_uppercase(), path.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// `(METHOD, path)` of every route `configure_api` registers.
    fn registered() -> BTreeSet<(String, String)> {
        endpoints()
            .into_iter()
            .map(|endpoint| (endpoint.method.to_string(), endpoint.path))
            .collect()
    }

    #[test]
    fn the_routes_registered_and_the_operations_documented_are_the_same() {
        let documented = documented(&document());
        let registered = registered();

        let undocumented: Vec<_> = registered.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&registered).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "served but not documented: {undocumented:?}; documented but not served: {unserved:?}"
        );
    }

    #[actix_web::test]
    async fn actix_serves_each_documented_method_and_refuses_the_others() {
        let document = document();
        let documented = documented(&document);
        let app = actix_test::init_service(App::new().configure(configure_api)).await;
        let paths: BTreeSet<&String> = documented.iter().map(|(_, path)| path).collect();

        for path in paths {
            for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
                let request = actix_test::TestRequest::default()
                    .method(Method::from_bytes(method.as_bytes()).expect("a method"))
                    .uri(path)
                    .to_request();
                let status = actix_test::call_service(&app, request).await.status();
                if documented.contains(&(method.to_owned(), path.clone())) {
                    assert!(
                        status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                        "{method} {path} is documented but not routed: {status}"
                    );
                } else {
                    assert_eq!(
                        status,
                        StatusCode::METHOD_NOT_ALLOWED,
                        "{method} {path} is not documented but answers"
                    );
                }
            }
        }
        let request = actix_test::TestRequest::get()
            .uri("/api/user/unknown")
            .to_request();
        assert_eq!(
            actix_test::call_service(&app, request).await.status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn every_customer_operation_of_the_spec_is_documented_with_its_status_codes() {
        // Every authenticated operation may meet the customer's request limit (429).
        let authenticated = ["401", "429", "500", "503"];
        let expected: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::from([
            (
                ("post", "/api/user/register"),
                vec!["200", "400", "409", "413", "500", "503"],
            ),
            (
                ("post", "/api/user/login"),
                vec!["200", "400", "401", "413", "429", "500", "503"],
            ),
            (
                ("post", "/api/user/orders"),
                [
                    &["200", "202", "400", "409", "413", "422"][..],
                    &authenticated,
                ]
                .concat(),
            ),
            (
                ("get", "/api/user/orders"),
                [&["200", "204", "304", "400"][..], &authenticated].concat(),
            ),
            (
                ("get", "/api/user/balance"),
                [&["200", "304"][..], &authenticated].concat(),
            ),
            (
                ("post", "/api/user/balance/withdraw"),
                [
                    &["200", "400", "402", "409", "413", "422"][..],
                    &authenticated,
                ]
                .concat(),
            ),
            (
                ("get", "/api/user/withdrawals"),
                [&["200", "204", "304", "400"][..], &authenticated].concat(),
            ),
            (
                ("get", "/api/user/events"),
                [&["200"][..], &authenticated].concat(),
            ),
        ]);
        let document = document();

        for ((method, path), statuses) in expected {
            let operation = &document["paths"][path][method];
            assert!(operation.is_object(), "{method} {path} is not documented");
            let documented: BTreeSet<&str> = operation["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .map(String::as_str)
                .collect();
            let statuses: BTreeSet<&str> = statuses.into_iter().collect();
            assert_eq!(documented, statuses, "{method} {path}");
            let secured = operation["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get(BEARER_SCHEME).is_some()));
            assert_eq!(
                secured,
                documented.contains("401") && path != "/api/user/login",
                "{method} {path}: security"
            );
        }
    }

    #[test]
    fn the_committed_document_is_the_generated_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let generated = format!("{}\n", openapi().to_pretty_json().expect("JSON"));
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).expect("docs/openapi.json written");
        }

        let committed = std::fs::read_to_string(&path).unwrap_or_default();

        assert!(
            committed == generated,
            "docs/openapi.json differs from the code: run `UPDATE_OPENAPI=1 cargo test -p adapters-http committed_document` and commit it"
        );
    }

    fn references(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(reference)) = map.get("$ref") {
                    found.push(reference.clone());
                }
                map.values().for_each(|v| references(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| references(v, found)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves() {
        let document = document();
        let mut found = Vec::new();
        references(&document, &mut found);

        assert!(!found.is_empty());
        for reference in found {
            let pointer = reference.strip_prefix('#').expect("a local reference");
            assert!(
                document.pointer(pointer).is_some(),
                "{reference} does not resolve"
            );
        }
    }

    /// Every operation of the document by its id.
    fn operations(document: &Value) -> BTreeMap<String, Value> {
        document["paths"]
            .as_object()
            .expect("paths")
            .values()
            .flat_map(|item| item.as_object().expect("item").values())
            .filter_map(|operation| {
                let id = operation["operationId"].as_str()?;
                Some((id.to_owned(), operation.clone()))
            })
            .collect()
    }

    #[test]
    fn every_link_is_in_the_document_and_leads_to_an_operation() {
        let operations = operations(&document());

        for (source, status, name, target, parameters, body) in link_table() {
            let link = &operations[source]["responses"][status]["links"][&name];
            assert_eq!(
                link["operationId"], target,
                "{source} {status} {name}: {link}"
            );
            assert!(operations.contains_key(target), "{target} is no operation");
            for (parameter, value) in parameters {
                assert_eq!(link["parameters"][parameter], value, "{source} {name}");
            }
            assert_eq!(link["requestBody"].as_str(), body, "{source} {name}");
        }
        for source in ["register", "login"] {
            let links = operations[source]["responses"]["200"]["links"]
                .as_object()
                .expect("links");
            for target in SIGNED_IN_OPERATIONS {
                assert_eq!(
                    links[target]["parameters"]["header.Authorization"],
                    "$response.header.Authorization"
                );
            }
        }
    }

    #[test]
    fn the_document_states_the_domain_limits() {
        let document = document();
        let schemas = &document["components"]["schemas"];
        let credentials = &schemas["CredentialsBody"]["properties"];
        let withdrawal = &schemas["WithdrawBody"]["properties"];

        assert_eq!(
            credentials["password"]["maxLength"],
            domain::MAX_PASSWORD_CHARS
        );
        assert_eq!(credentials["password"]["minLength"], 1);
        assert_eq!(credentials["login"]["maxLength"], domain::MAX_LOGIN_CHARS);
        assert_eq!(
            withdrawal["order"]["maxLength"],
            domain::MAX_ORDER_NUMBER_LEN
        );
        assert_eq!(withdrawal["order"]["format"], "luhn");
        assert_eq!(withdrawal["sum"]["multipleOf"], 0.01);
        assert_eq!(withdrawal["sum"]["exclusiveMinimum"], 0);
        assert_eq!(
            withdrawal["sum"]["exclusiveMaximum"],
            1_000_000_000_000_000_000_i64
        );
    }

    #[test]
    fn both_ways_of_presenting_the_token_are_described() {
        let document = document();
        let schemes = &document["components"]["securitySchemes"];

        assert_eq!(schemes[BEARER_SCHEME]["type"], "http");
        assert_eq!(schemes[BEARER_SCHEME]["scheme"], "bearer");
        assert_eq!(schemes[BEARER_SCHEME]["bearerFormat"], "JWT");
        assert_eq!(schemes[COOKIE_SCHEME]["type"], "apiKey");
        assert_eq!(schemes[COOKIE_SCHEME]["in"], "cookie");
        assert_eq!(schemes[COOKIE_SCHEME]["name"], TOKEN_COOKIE);
    }

    #[test]
    fn errors_are_problem_documents_with_examples() {
        let document = document();
        let responses = document["paths"]
            .as_object()
            .expect("paths")
            .values()
            .flat_map(|item| item.as_object().expect("item").values())
            .flat_map(|operation| operation["responses"].as_object().expect("responses"));

        for (status, response) in responses {
            if !status.starts_with('4') && !status.starts_with('5') {
                continue;
            }
            let response = match response.get("$ref").and_then(Value::as_str) {
                Some(reference) => document
                    .pointer(reference.trim_start_matches('#'))
                    .expect("resolves"),
                None => response,
            };
            let content = &response["content"]["application/problem+json"];
            assert!(content.is_object(), "{status}: {response}");
            assert!(content["example"].is_object(), "{status}: no example");
        }
    }
}
