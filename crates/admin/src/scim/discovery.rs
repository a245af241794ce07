//! SCIM discovery (RFC 7644 §4): what this service provider supports, its
//! resource types and the schemas of the attributes it keeps.

use super::{
    base, respond, Ctx, ScimError, ScimResult, GROUP_SCHEMA, LIST_SCHEMA, MAX_RESULTS, USER_SCHEMA,
};
use axum::extract::{Path, State};
use http::StatusCode;
use serde_json::{json, Value};

const SPC_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig";
const RT_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:ResourceType";
const SCHEMA_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";

fn list(items: Vec<Value>) -> Value {
    json!({
        "schemas": [LIST_SCHEMA],
        "totalResults": items.len(),
        "startIndex": 1,
        "itemsPerPage": items.len(),
        "Resources": items,
    })
}

pub async fn service_provider_config(State(identity): State<Ctx>) -> ScimResult {
    let b = base(&identity);
    Ok(respond(
        StatusCode::OK,
        &json!({
            "schemas": [SPC_SCHEMA],
            "documentationUri": format!("{}/api/v1/openapi.json", identity.issuer()),
            "patch": {"supported": true},
            "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": true, "maxResults": MAX_RESULTS},
            "changePassword": {"supported": false},
            "sort": {"supported": false},
            "etag": {"supported": false},
            "authenticationSchemes": [{
                "type": "oauthbearertoken",
                "name": "API token",
                "description": "A Portcullis API token with the scim scope (portcullis token create --scope scim)",
                "primary": true,
            }],
            "meta": {"resourceType": "ServiceProviderConfig", "location": format!("{b}/ServiceProviderConfig")},
        }),
    ))
}

fn resource_type_docs(b: &str) -> Vec<Value> {
    [("User", "/Users", USER_SCHEMA), ("Group", "/Groups", GROUP_SCHEMA)]
        .iter()
        .map(|(name, endpoint, schema)| {
            json!({
                "schemas": [RT_SCHEMA],
                "id": name,
                "name": name,
                "endpoint": endpoint,
                "schema": schema,
                "schemaExtensions": [],
                "meta": {"resourceType": "ResourceType", "location": format!("{b}/ResourceTypes/{name}")},
            })
        })
        .collect()
}

pub async fn resource_types(State(identity): State<Ctx>) -> ScimResult {
    Ok(respond(
        StatusCode::OK,
        &list(resource_type_docs(&base(&identity))),
    ))
}

pub async fn resource_type(State(identity): State<Ctx>, Path(id): Path<String>) -> ScimResult {
    resource_type_docs(&base(&identity))
        .into_iter()
        .find(|r| r["id"] == json!(id))
        .map(|r| respond(StatusCode::OK, &r))
        .ok_or_else(|| ScimError::not_found(format!("ResourceType {id:?} not found")))
}

fn attr(
    name: &str,
    kind: &str,
    required: bool,
    mutability: &str,
    uniqueness: &str,
    case_exact: bool,
) -> Value {
    json!({
        "name": name, "type": kind, "multiValued": false, "required": required,
        "caseExact": case_exact, "mutability": mutability, "returned": "default",
        "uniqueness": uniqueness,
    })
}

fn multi(name: &str, mutability: &str, subs: Vec<Value>) -> Value {
    json!({
        "name": name, "type": "complex", "multiValued": true, "required": false,
        "mutability": mutability, "returned": "default", "subAttributes": subs,
    })
}

fn schema_docs(b: &str) -> Vec<Value> {
    let user = json!({
        "schemas": [SCHEMA_SCHEMA],
        "id": USER_SCHEMA,
        "name": "User",
        "description": "A person; service accounts are not SCIM resources",
        "attributes": [
            attr("userName", "string", true, "readWrite", "server", false),
            attr("externalId", "string", false, "readWrite", "none", true),
            attr("displayName", "string", false, "readWrite", "none", false),
            {
                "name": "name", "type": "complex", "multiValued": false, "required": false,
                "mutability": "readWrite", "returned": "default",
                "subAttributes": [
                    attr("formatted", "string", false, "readWrite", "none", false),
                    attr("givenName", "string", false, "readWrite", "none", false),
                    attr("familyName", "string", false, "readWrite", "none", false),
                ],
            },
            multi("emails", "readWrite", vec![
                attr("value", "string", false, "readWrite", "none", false),
                attr("type", "string", false, "readWrite", "none", false),
                attr("primary", "boolean", false, "readWrite", "none", false),
            ]),
            attr("active", "boolean", false, "readWrite", "none", false),
            multi("groups", "readOnly", vec![
                attr("value", "string", false, "readOnly", "none", true),
                attr("display", "string", false, "readOnly", "none", false),
                attr("$ref", "reference", false, "readOnly", "none", true),
            ]),
        ],
        "meta": {"resourceType": "Schema", "location": format!("{b}/Schemas/{USER_SCHEMA}")},
    });
    let group = json!({
        "schemas": [SCHEMA_SCHEMA],
        "id": GROUP_SCHEMA,
        "name": "Group",
        "description": "A group; virtual servers grant access to groups by displayName",
        "attributes": [
            attr("displayName", "string", true, "readWrite", "server", false),
            attr("externalId", "string", false, "readWrite", "none", true),
            multi("members", "readWrite", vec![
                attr("value", "string", true, "immutable", "none", true),
                attr("display", "string", false, "readOnly", "none", false),
                attr("$ref", "reference", false, "immutable", "none", true),
                attr("type", "string", false, "immutable", "none", false),
            ]),
        ],
        "meta": {"resourceType": "Schema", "location": format!("{b}/Schemas/{GROUP_SCHEMA}")},
    });
    vec![user, group]
}

pub async fn schemas(State(identity): State<Ctx>) -> ScimResult {
    Ok(respond(
        StatusCode::OK,
        &list(schema_docs(&base(&identity))),
    ))
}

pub async fn schema(State(identity): State<Ctx>, Path(id): Path<String>) -> ScimResult {
    schema_docs(&base(&identity))
        .into_iter()
        .find(|s| s["id"] == json!(id))
        .map(|s| respond(StatusCode::OK, &s))
        .ok_or_else(|| ScimError::not_found(format!("Schema {id:?} not found")))
}
