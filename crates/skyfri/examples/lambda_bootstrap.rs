//! A Lambda custom runtime built with AWS's `lambda_runtime` crate: the `bootstrap` of the
//! lambda-provided e2e test (tests/lambda.rs). Answers an API Gateway event with what its
//! context says; `{"action": "fail"}` (or `?action=fail`) fails.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handle)).await
}

async fn handle(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (payload, context) = event.into_parts();
    let action = payload
        .pointer("/queryStringParameters/action")
        .or_else(|| payload.get("action"))
        .and_then(Value::as_str)
        .unwrap_or("echo");
    if action == "fail" {
        return Err("the rust handler was asked to fail".into());
    }
    let body = json!({
        "runtime": "lambda_runtime",
        "rawPath": payload.get("rawPath"),
        "requestId": context.request_id,
        "deadlineMs": context.deadline,
        "functionArn": context.invoked_function_arn,
    });
    Ok(json!({
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": body.to_string(),
    }))
}
