//! The OpenAPI 3.0 document of `/api/v1`, served at `/api/v1/openapi.json`.

use serde_json::{json, Value};

fn error_responses() -> Value {
    let e = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    json!({
        "400": e("bad_request: the body is not what the operation takes"),
        "401": e("unauthorized: no session and no valid bearer token"),
        "403": e("read_only (a read-only token wrote) or csrf (a session wrote without its token)"),
        "404": e("not_found"),
        "409": e("conflict"),
        "413": e("payload_too_large"),
        "503": e("unavailable")
    })
}

fn op(summary: &str, ok: Value, body: Option<Value>) -> Value {
    let mut responses = error_responses();
    for (code, response) in ok.as_object().expect("object") {
        responses[code] = response.clone();
    }
    let mut operation = json!({"summary": summary, "responses": responses});
    if let Some(schema) = body {
        operation["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": schema}}});
    }
    operation
}

fn json_ok(code: &str, schema: Value) -> Value {
    json!({code: {"description": "ok", "content": {"application/json": {"schema": schema}}}})
}

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn list_of(key: &str, item: &str) -> Value {
    json!({"type": "object", "properties": {key: {"type": "array", "items": schema(item)}}})
}

fn path_param(name: &str) -> Value {
    json!([{"name": name, "in": "path", "required": true, "schema": {"type": "string"}}])
}

/// The document.
pub fn document() -> Value {
    let no_content = json!({"204": {"description": "done"}});
    let password = |key: &str| json!({"type": "object", "properties": {key: {"type": "string"}, "password": {"type": "string"}}});
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "journalgate API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Gateway mailboxes, archive users, the certificate, status, activity, alerts and the protocol trace. Every console action is one of these calls."
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}, {"session": []}],
        "paths": {
            "/status": {"get": op("Everything at a glance", json_ok("200", schema("Status")), None)},
            "/mailboxes": {
                "get": op("List the gateway mailboxes", json_ok("200", list_of("mailboxes", "Mailbox")), None),
                "post": op("Create a mailbox (its password is in the answer, once)",
                    json_ok("201", schema("NewMailbox")),
                    Some(json!({"type": "object", "properties": {"name": {"type": "string"}, "description": {"type": "string"}}})))
            },
            "/mailboxes/{id}": {
                "parameters": path_param("id"),
                "get": op("One mailbox", json_ok("200", schema("Mailbox")), None),
                "patch": op("Rename, redescribe, suspend or resume", json_ok("200", schema("Mailbox")),
                    Some(json!({"type": "object", "properties": {"name": {"type": "string"}, "description": {"type": "string"}, "status": {"type": "string", "enum": ["active", "suspended"]}}}))),
                "delete": op("Delete a suspended mailbox and its mail (409 unless suspended)", no_content.clone(), None)
            },
            "/mailboxes/{id}/reset-password": {
                "parameters": path_param("id"),
                "post": op("A new password and key (mail sealed to the old one is set aside)", json_ok("200", password("id")), None)
            },
            "/users": {
                "get": op("List the archive users", json_ok("200", list_of("users", "User")), None),
                "post": op("Add an archive user (the password is in the answer, once)", json_ok("201", schema("NewUser")),
                    Some(json!({"type": "object", "required": ["email"], "properties": {"email": {"type": "string"}, "aliases": {"type": "array", "items": {"type": "string"}}, "name": {"type": "string"}, "auditor": {"type": "boolean"}}})))
            },
            "/users/{login}": {
                "parameters": path_param("login"),
                "get": op("One archive user", json_ok("200", schema("User")), None),
                "patch": op("Change a user's aliases (the whole list) or name", json_ok("200", schema("User")),
                    Some(json!({"type": "object", "properties": {"aliases": {"type": "array", "items": {"type": "string"}}, "name": {"type": "string"}}}))),
                "delete": op("Delete a user (archived mail stays for auditors)", no_content, None)
            },
            "/users/{login}/reset-password": {
                "parameters": path_param("login"),
                "post": op("A new password and key (archived mail needs a grant)", json_ok("200", password("login")), None)
            },
            "/certificate": {
                "get": op("The certificate in use", json_ok("200", schema("Certificate")), None),
                "post": op("Install a PEM certificate and key (source = files)", json_ok("200", schema("Certificate")),
                    Some(json!({"type": "object", "required": ["cert_pem", "key_pem"], "properties": {"cert_pem": {"type": "string"}, "key_pem": {"type": "string"}}})))
            },
            "/certificate/renew": {"post": op("Order a new ACME certificate now", json_ok("200", schema("Certificate")), None)},
            "/events": {
                "get": {
                    "summary": "Recent activity, newest first",
                    "parameters": [
                        {"name": "mailbox", "in": "query", "schema": {"type": "string"}},
                        {"name": "kind", "in": "query", "schema": {"type": "string", "enum": ["accepted", "rejected", "login", "login_failed", "collected", "deleted", "admin"]}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000}}
                    ],
                    "responses": json_ok("200", list_of("events", "Event"))
                }
            },
            "/alerts": {"get": op("Alerts firing now", json_ok("200", list_of("alerts", "Alert")), None)},
            "/trace": {"post": op("Trace a protocol's sessions (credentials masked) for some minutes, or stop",
                json_ok("200", json!({"type": "object", "properties": {"protocol": {"type": "string"}, "until": {"type": "string", "nullable": true}}})),
                Some(json!({"type": "object", "required": ["protocol", "on"], "properties": {"protocol": {"type": "string", "enum": ["smtp", "pop3", "imap"]}, "on": {"type": "boolean"}, "minutes": {"type": "integer"}}})))}
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "journalgate token create --name N [--read-only]"},
                "session": {"type": "apiKey", "in": "cookie", "name": "jg_session", "description": "a console session; writes also need X-CSRF-Token"}
            },
            "schemas": schemas()
        }
    })
}

fn schemas() -> Value {
    let s = |t: &str| json!({"type": t});
    let nullable = |t: &str| json!({"type": t, "nullable": true});
    let mailbox = json!({"type": "object", "properties": {
        "id": s("string"), "address": s("string"), "name": s("string"), "description": s("string"),
        "status": {"type": "string", "enum": ["active", "suspended"]}, "created": s("string"),
        "tenant": nullable("string"), "messages": s("integer"), "bytes": s("integer"),
        "last_received": nullable("string"),
        "last_collected": {"type": "object", "nullable": true, "properties": {"time": s("string"), "protocol": s("string"), "client": s("string")}}
    }});
    let user = json!({"type": "object", "properties": {
        "id": s("string"), "login": s("string"), "aliases": {"type": "array", "items": s("string")},
        "name": s("string"), "auditor": s("boolean"), "created": s("string")
    }});
    let with_password = |base: &Value| {
        let mut v = base.clone();
        v["properties"]["password"] = s("string");
        v
    };
    json!({
        "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {"code": s("string"), "message": s("string")}}}},
        "Mailbox": mailbox,
        "NewMailbox": with_password(&mailbox),
        "User": user,
        "NewUser": with_password(&user),
        "Certificate": {"type": "object", "properties": {"source": s("string"), "names": {"type": "array", "items": s("string")}, "issuer": s("string"), "not_after": s("string"), "days_left": s("integer"), "last_error": nullable("string")}},
        "Event": {"type": "object", "properties": {"time": s("string"), "kind": s("string"), "mailbox": s("string"), "protocol": s("string"), "client": s("string"), "detail": s("string")}},
        "Alert": {"type": "object", "properties": {"alert": s("string"), "state": s("string"), "mailbox": s("string"), "message": s("string"), "since": s("string")}},
        "Status": {"type": "object", "properties": {
            "version": s("string"), "hostname": s("string"), "uptime_secs": s("integer"),
            "mailboxes": {"type": "array", "items": {"$ref": "#/components/schemas/Mailbox"}},
            "archive": {"type": "object", "nullable": true},
            "certificate": {"$ref": "#/components/schemas/Certificate"},
            "disk": {"type": "object", "properties": {"free_bytes": s("integer"), "reserve_bytes": s("integer")}},
            "listeners": {"type": "array", "items": {"type": "object", "properties": {"protocol": s("string"), "addr": s("string")}}},
            "alerts": {"type": "array", "items": {"$ref": "#/components/schemas/Alert"}},
            "recovery_key": s("boolean"),
            "cluster": {"type": "object", "nullable": true, "properties": {
                "node": s("string"), "store_up": s("boolean"), "last_sync": nullable("integer"),
                "last_error": nullable("string"),
                "nodes": {"type": "array", "items": {"type": "object", "properties": {"node": s("string"), "last_seen": s("integer")}}}
            }}
        }}
    })
}
